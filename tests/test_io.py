"""Atomic outputs: a crash between atomic_dir's renames never loses the output; stale temporaries of
killed processes are removed by the next write of the same output, and nothing else is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import discovla.io as io
from discovla.io import atomic_dir, atomic_path, recover_dir, stale_temporaries


def _write_dir(path: Path, text: str) -> None:
    with atomic_dir(path) as tmp:
        (tmp / "f.txt").write_text(text)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporary_names_carry_host_and_pid(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "out") as tmp:
        host, pid, _, suffix = tmp.name[len(".out.") :].split(".")
        assert (host, int(pid), suffix) == (io._host(), os.getpid(), "tmp")
    with atomic_path(tmp_path / "x.json") as tmp:
        assert tmp.name.startswith(f".x.json.{io._host()}.{os.getpid()}.") and tmp.name.endswith(".tmp")


def test_failed_second_rename_puts_the_old_copy_back(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    _write_dir(out, "old")
    real, calls = os.replace, []

    def replace(src, dst):  # the second rename (new copy in) fails once
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk went away")
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(OSError, match="disk went away"):
        _write_dir(out, "new")
    assert (out / "f.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary, no old copy left


def test_crash_between_renames_is_recovered_on_next_use(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    _write_dir(out, "old")
    real, calls = os.replace, []

    def replace(src, dst):  # a crash after the first rename: nothing renames any more
        calls.append(1)
        if len(calls) >= 2:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        _write_dir(out, "new")
    monkeypatch.setattr(io.os, "replace", real)
    assert not out.exists() and (tmp_path / ".out.old/f.txt").read_text() == "old"  # the crash's state
    recover_dir(out)
    assert (out / "f.txt").read_text() == "old" and not (tmp_path / ".out.old").exists()
    # and atomic_dir itself recovers first, then replaces as usual
    monkeypatch.setattr(io.os, "replace", replace)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        _write_dir(out, "new")
    monkeypatch.setattr(io.os, "replace", real)
    _write_dir(out, "newer")
    assert (out / "f.txt").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_old_copy_beside_the_output_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write_dir(out, "current")
    (tmp_path / ".out.old").mkdir()  # a crash after both renames, before the old copy was removed
    recover_dir(out)
    assert (out / "f.txt").read_text() == "current" and not (tmp_path / ".out.old").exists()


def test_stale_temporaries_of_the_output_are_removed_and_reported(tmp_path: Path, capsys) -> None:
    host, dead = io._host(), _dead_pid()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        stale = tmp_path / f".features.{host}.{dead}.k2j4.tmp"
        (stale / "sub").mkdir(parents=True)
        (stale / "sub/pixels.arrow").write_bytes(b"x" * 1500)
        stale_file = tmp_path / f".metrics.json.{host}.{dead}.abcd.tmp"
        stale_file.write_bytes(b"y" * 10)
        kept = [
            tmp_path / f".features.{host}.{os.getpid()}.own1.tmp",  # this live process
            tmp_path / f".features.{host}.{child.pid}.kid1.tmp",  # a running child
            tmp_path / f".features.other-host.{dead}.away.tmp",  # another host: its pid says nothing here
            tmp_path / f".features.x.{host}.{dead}.name.tmp",  # another output's (features.x)
            tmp_path / f".frames.{host}.{dead}.name.tmp",  # another output's
            tmp_path / ".features.legacy1.tmp",  # no pid: cannot tell
        ]
        for k in kept:
            k.mkdir()
        assert stale_temporaries(tmp_path / "features") == [stale]
        _write_dir(tmp_path / "features", "done")
        err = capsys.readouterr().err
        assert not stale.exists() and all(k.exists() for k in kept)
        assert err.count("\n") == 1 and stale.name in err and "1.5 kB" in err and "features" in err
        io.write_json(tmp_path / "metrics.json", {})
        assert not stale_file.exists() and "10 B" in capsys.readouterr().err
    finally:
        child.communicate(b"")
