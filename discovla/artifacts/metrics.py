"""The pipeline's plot files under ``metrics/`` (CSV for ``dvc plots``): the training curve and recall@K."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from discovla.io import write_json, write_text
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


# Values that change from run to run of the same code and data (timings, speeds, where it ran): they go to
# ``metrics/info/<stage>.json``, which DVC does not compare, so ``dvc metrics diff`` shows only real changes.
RUN_KEYS = frozenset(
    {"seconds", "video_seconds", "train_seconds", "videos_per_s", "frames_per_s", "captions_per_s",
     "samples_per_s", "data_wait", "device", "workers"}
)  # fmt: skip


def split_run_info(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics, run info)`` of a stage's record: every :data:`RUN_KEYS` entry, at any depth (also inside
    lists of dicts, such as per-epoch tables), moves to the run info under the same path."""

    def split(obj: Any) -> tuple[Any, Any]:
        if isinstance(obj, dict):
            kept, moved = {}, {}
            for k, v in obj.items():
                if k in RUN_KEYS:
                    moved[k] = v
                    continue
                a, b = split(v)
                kept[k] = a
                if b not in (None, {}, []):
                    moved[k] = b
            return kept, moved
        if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
            parts = [split(x) for x in obj]
            moved = [b for _, b in parts]
            return [a for a, _ in parts], moved if any(moved) else None
        return obj, None

    return split(record)


def write_metrics(metrics_path: str | Path, info_path: str | Path, record: dict[str, Any]) -> None:
    """Write ``record`` as a DVC metrics file and its run information (:func:`split_run_info`) next to it."""
    metrics, info = split_run_info(record)
    write_json(metrics_path, metrics)
    write_json(info_path, info)
