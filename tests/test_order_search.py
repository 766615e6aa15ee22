"""benchmarks/order_search.py: a candidate is the params with its changes merged in, and is evaluated on the
val split (the faithful model ties every caption with its reversed video: reversal exactly 50)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.test_ablation import PARAMS

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("order_search", REPO / "benchmarks/order_search.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_candidate_params_merge_changes_and_scale_epochs() -> None:
    p = bench.candidate_params(PARAMS, bench.CANDIDATES["trend_w10_x3"], epochs=2)
    assert (p.temporal.trends, p.temporal.order_weight, p.train.epochs) == (1, 10.0, 6)
    assert p.fusion == PARAMS.fusion and p.temporal.module == PARAMS.temporal.module
    tokens = bench.candidate_params(PARAMS, bench.CANDIDATES["trend_tokens_w10"], epochs=1)
    assert tokens.fusion.temporal_position and tokens.fusion.alpha == PARAMS.fusion.alpha
    assert bench.CANDIDATES["trend_w10_x3"] == {
        "temporal": {"trends": 1, "order_weight": 10.0},
        "epochs_factor": 3,
    }


def test_candidates_are_evaluated_on_val(tiny_clip_factory, tmp_path: Path) -> None:
    from tests.conftest import synthetic_features

    features = synthetic_features(n_val=6)
    faithful = bench.run_candidate(PARAMS, features, {}, 1, 1, tmp_path, tiny_clip_factory)
    assert faithful["val_reversal_acc"] == pytest.approx(50.0)  # order-blind: every caption ties
    trend = bench.run_candidate(
        PARAMS, features, bench.CANDIDATES["trend_w10"], 1, 1, tmp_path, tiny_clip_factory
    )
    assert trend["checkpoint_key"] != faithful["checkpoint_key"]
    assert trend["val_reversal_acc"] != pytest.approx(50.0)  # the slope moves a video and its reversal apart
    assert trend["per_epoch"][0]["order"] > 0 and faithful["per_epoch"][0]["val_t2v_R@1"] is not None
