"""What goes into DVC metrics and what into run information (timings, speeds, device)."""

from __future__ import annotations

import json
from pathlib import Path

from discovla.artifacts.metrics import split_run_info, write_metrics


def test_run_dependent_values_move_out_at_any_depth() -> None:
    record = {
        "steps": 10,
        "seconds": 1.5,
        "val": {"R@1": 90.0, "device": "cpu"},
        "per_epoch": [{"loss": 2.0, "seconds": 0.7, "samples_per_s": 9.0}, {"loss": 1.0, "seconds": 0.8}],
        "counts": [1, 2],
    }
    metrics, info = split_run_info(record)
    assert metrics == {
        "steps": 10,
        "val": {"R@1": 90.0},
        "per_epoch": [{"loss": 2.0}, {"loss": 1.0}],
        "counts": [1, 2],
    }
    assert info == {
        "seconds": 1.5,
        "val": {"device": "cpu"},
        "per_epoch": [{"seconds": 0.7, "samples_per_s": 9.0}, {"seconds": 0.8}],
    }


def test_two_runs_that_differ_only_in_timings_write_identical_metrics(tmp_path: Path) -> None:
    a = {"done": 5, "seconds": 1.0, "videos_per_s": 5.0}
    b = {"done": 5, "seconds": 2.0, "videos_per_s": 2.5}
    write_metrics(tmp_path / "a.json", tmp_path / "a-info.json", a)
    write_metrics(tmp_path / "b.json", tmp_path / "b-info.json", b)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert json.loads((tmp_path / "b-info.json").read_text()) == {"seconds": 2.0, "videos_per_s": 2.5}
