"""Atomic outputs: every file or directory a stage writes appears complete or not at all.

A temporary is written next to its output as ``.<name>.<host>.<pid>.<random>.tmp`` and renamed onto it
only when the block succeeds. A process killed mid-write (``kill -9``, out of memory) leaves its temporary
behind; the next write of the same output removes the temporaries of that output name whose process is
gone from this host, and says so (:func:`remove_stale_temporaries`). Another name's temporaries, another
host's and those of a live process are never touched. Replacing an existing directory takes two renames
(old copy aside, new copy in); a crash between them leaves ``.<name>.old`` and no ``<name>``, which the
next write of that output puts back (:func:`recover_dir`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host() -> str:
    """This host's name as it appears in temporary names: no dots (they separate the name's fields)."""
    return (socket.gethostname() or "localhost").replace(".", "-")


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{_host()}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def human_size(n: float) -> str:
    """``n`` bytes as ``12.3 GB`` (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporaries of the output ``path`` (same name, next to it) left by a process of this host that no
    longer runs. Temporaries of other names, other hosts, live processes or unknown form are not listed."""
    path = Path(path)
    prefix, host = f".{path.name}.", _host()
    stale = []
    with contextlib.suppress(FileNotFoundError):
        for entry in path.parent.iterdir():
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(TMP_SUFFIX)):
                continue
            fields = name[len(prefix) : -len(TMP_SUFFIX)].split(".")
            if len(fields) != 3 or fields[0] != host or not fields[1].isdigit():
                continue
            if not _pid_alive(int(fields[1])):
                stale.append(entry)
    return sorted(stale)


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove :func:`stale_temporaries` of ``path``, printing one line with what was removed and its size;
    return the removed paths."""
    stale = stale_temporaries(path)
    if not stale:
        return []
    removed, total = [], 0
    for tmp in stale:
        try:
            size = _size(tmp)
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        except FileNotFoundError:  # another process cleaned it first
            continue
        removed.append(tmp)
        total += size
    if removed:
        names = ", ".join(p.name for p in removed)
        print(
            f"removed {len(removed)} stale temporar{'y' if len(removed) == 1 else 'ies'} of {path} "
            f"({human_size(total)}) left by killed processes: {names}",
            file=sys.stderr,
            flush=True,
        )
    return removed


def _old_copy(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover_dir(path: str | Path) -> None:
    """Finish an interrupted directory replacement: put ``.<name>.old`` back when ``<name>`` is missing (the
    crash came between the two renames), remove it when both exist (the crash came after them)."""
    path = Path(path)
    old = _old_copy(path)
    if not old.exists():
        return
    if path.exists():
        shutil.rmtree(old)
    else:
        os.replace(old, path)
        print(f"restored {path} from {old.name} (a replacement was interrupted)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; it replaces ``path`` only if the block succeeds.

    ``path`` is never left missing: if a crash comes between moving the old copy aside and moving the new
    one in, the next ``atomic_dir(path)`` restores the old copy first. Stale temporaries of ``path`` from
    killed processes are removed on entry."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        if path.exists():
            old = _old_copy(path)
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the old copy back; a hard kill here is recovered on next use
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_parquet(path: str | Path, table: pa.Table, **kwargs: Any) -> None:
    """Write a Parquet file atomically (zstd by default)."""
    kwargs.setdefault("compression", "zstd")
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
