"""The frames stage script over a small folder dataset mixing good and bad videos: summary line, metrics,
and the one-line failures. The store it writes is tested in test_frames_store.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.stages import stage_command
from test_frames_store import SIZE, F, make_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ds"))


def _stage(cwd: Path, root: Path) -> subprocess.CompletedProcess:
    params = {"data": {"dataset": "folder", "root": str(root)}, "frames": {"num_frames": F, "size": SIZE}}
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        stage_command("frames"), cwd=cwd, capture_output=True, text=True, env=env, timeout=120
    )


def test_stage_script(dataset_root: Path, tmp_path: Path) -> None:
    r = _stage(tmp_path, dataset_root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("frames: 4/8 videos sampled, 4 skipped")
    metrics = yaml.safe_load((tmp_path / "metrics" / "frames.json").read_text())
    assert metrics["done"] == 4 and metrics["frames"] == 4 * F
    assert (tmp_path / "data" / "frames" / "skipped.csv").exists()


def test_stage_script_fails_on_unreadable_dataset(tmp_path: Path) -> None:
    r = _stage(tmp_path, tmp_path / "no-such-dataset")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "captions.csv" in r.stderr  # one line
    assert not (tmp_path / "data" / "frames").exists()


def test_stage_script_fails_when_every_video_fails(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "x.mp4").write_bytes(b"")
    pd.DataFrame({"video_id": ["x", "y"], "caption": ["a", "b"], "split": ["train", "test"]}).to_csv(
        root / "captions.csv", index=False
    )
    r = _stage(tmp_path, root)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("error: frames: no video could be sampled") and "empty file" in last
