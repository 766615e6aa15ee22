"""Sharing outputs through a DVC remote (README, "Everyday use"): one clone pushes, another pulls and has
nothing to reproduce; an output marked ``push: false`` (licensed frames) stays on the machine that made it.

A small DVC repository with two stages stands in for the pipeline, so the check takes seconds; the remote
is a local directory, the same commands as for S3, GCS or SSH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

# a two-stage pipeline: "frames" from the (git-tracked here) videos, "model" from the frames
FRAMES = (
    "import pathlib, sys; pathlib.Path('frames').mkdir(exist_ok=True); "
    "pathlib.Path('frames/f.txt').write_text(open('videos.txt').read() * 3); "
    "open(sys.argv[1], 'a').write('frames ')"
)
MODEL = (
    "import sys; open('model.txt', 'w').write(open('frames/f.txt').read().upper()); "
    "open(sys.argv[1], 'a').write('model ')"
)
PRIVATE = "import pathlib; pathlib.Path('private.txt').write_text('licensed frames')"


def _run(cwd: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}  # no usage reports from a test
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def _dvc(cwd: Path, *args: str) -> str:
    return _run(cwd, sys.executable, "-m", "dvc", *args)


def _objects(remote: Path) -> set[str]:
    """md5s stored in a DVC 3 remote (files/md5/ab/cdef...)."""
    return {p.parent.name + p.name.removesuffix(".dir") for p in (remote / "files" / "md5").glob("*/*")}


def _lock_md5(repo: Path, stage: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return lock["stages"][stage]["outs"][0]["md5"].removesuffix(".dir")


def test_push_from_one_clone_pull_in_another(tmp_path: Path) -> None:
    origin, clone, remote, runs = (
        tmp_path / "origin",
        tmp_path / "clone",
        tmp_path / "remote",
        tmp_path / "runs",
    )
    origin.mkdir()
    _run(origin, "git", "init", "-q", "-b", "main")
    _run(origin, "git", "config", "user.email", "ci@example.com")
    _run(origin, "git", "config", "user.name", "ci")
    _dvc(origin, "init", "-q")
    (origin / "videos.txt").write_text("a video\n")
    stages = {
        "frames": {
            "cmd": f'{sys.executable} -c "{FRAMES}" {runs}',
            "deps": ["videos.txt"],
            "outs": ["frames"],
        },
        "model": {"cmd": f'{sys.executable} -c "{MODEL}" {runs}', "deps": ["frames"], "outs": ["model.txt"]},
    }
    (origin / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    _dvc(origin, "repro", "-q")
    _dvc(origin, "remote", "add", "-d", "storage", str(remote))  # committed: a clone knows the remote
    _run(origin, "git", "add", "-A")
    _run(origin, "git", "commit", "-qm", "pipeline, lock and remote")
    _dvc(origin, "push")
    assert runs.read_text() == "frames model "

    _run(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    assert not (clone / "model.txt").exists()
    _dvc(clone, "pull")
    assert (clone / "model.txt").read_text() == "A VIDEO\n" * 3
    assert json.loads(_dvc(clone, "status", "--json")) == {}
    out = _dvc(clone, "repro")
    assert "didn't change, skipping" in out and "Running stage" not in out, out
    assert runs.read_text() == "frames model "  # nothing ran in the clone

    # an output marked push: false (a licensed dataset's frames) is never uploaded
    stages["private"] = {
        "cmd": f'{sys.executable} -c "{PRIVATE}"',
        "outs": [{"private.txt": {"push": False}}],
    }
    (origin / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    _dvc(origin, "repro", "-q", "private")
    _dvc(origin, "push")
    stored = _objects(remote)
    assert _lock_md5(origin, "model") in stored and _lock_md5(origin, "frames") in stored
    assert _lock_md5(origin, "private") not in stored
