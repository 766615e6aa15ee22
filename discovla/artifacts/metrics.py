"""The pipeline's plot files under ``metrics/`` (CSV for ``dvc plots``): the training curve and recall@K."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from discovla.io import write_text
from discovla.retrieval import recall_at

CURVE_COLUMNS = ("step", "epoch", "lr", "loss", "video", "img", "distill")
RECALL_KS = (1, 2, 3, 5, 10, 20, 50)


def write_train_curve(path: str | Path, curve: list[dict[str, Any]]) -> None:
    """One row per optimiser step: step, epoch, lr and the loss terms (6 significant digits)."""
    lines = [",".join(CURVE_COLUMNS)]
    lines += [",".join(f"{row.get(c, 0.0):.6g}" for c in CURVE_COLUMNS) for row in curve]
    write_text(path, "\n".join(lines) + "\n")


def write_recall_curve(path: str | Path, ranks: dict[str, dict[str, Any]]) -> None:
    """One row per K and one column per (model, direction): ``ranks[model][direction]`` are 1-based ranks."""
    cols = [f"{m}_{d}" for m in ranks for d in ("t2v", "v2t")]
    lines = ["k," + ",".join(cols)]
    for k in RECALL_KS:
        vals = [f"{recall_at(ranks[m][d], k):.3f}" for m in ranks for d in ("t2v", "v2t")]
        lines.append(f"{k}," + ",".join(vals))
    write_text(path, "\n".join(lines) + "\n")
