"""benchmarks/order_generalisation.py reads a finished ablation run back from its checkpoint: on the test
split it must give the numbers the ablation recorded for that run, and it refuses a run not yet trained."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from discovla.ablation import run_one
from tests.test_ablation import PARAMS

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "order_generalisation", REPO / "benchmarks/order_generalisation.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_reads_the_ablation_runs_own_numbers_back(features, tiny_clip_factory, tmp_path: Path) -> None:
    record = run_one(PARAMS, features, tiny_clip_factory, "order", 1, tmp_path)
    (run,) = bench.evaluate_runs(PARAMS, features, tiny_clip_factory, "order", [1], tmp_path, batch_size=32)
    assert run["checkpoint_key"] == record["checkpoint_key"]
    assert run["test"]["reversal_acc"] == pytest.approx(record["reversal_acc"], abs=0.01)
    assert run["test"]["captions"] == len(features.split_captions("test"))
    assert run["train"]["captions"] == len(features.split_captions("train"))
    assert 0 <= run["train"]["reversal_acc"] <= 100

    with pytest.raises(SystemExit, match="has not finished training"):  # the same row, longer: not trained
        bench.evaluate_runs(PARAMS, features, tiny_clip_factory, "order@e2", [1], tmp_path, batch_size=32)
