"""The ablation table (``metrics/ablation.json`` and ``metrics/ablation.md``): its rows' labels, columns,
Markdown rendering and writer.

The runner (:mod:`discovla.ablation`) trains and evaluates the rows; this module owns what it writes, so
that readers (the report) do not import training.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from discovla.io import read_json, write_json, write_text

LABELS = {
    "zeroshot": "Zero-shot (frozen CLIP, mean of frames)",
    "lora": "LoRA only",
    "ivfusion": "+ IVFusion",
    "pimgalign": "+ PImgAlign",
    "full": "Full DiscoVLA (+ AlignDistill), beta = 1, reference scaling",
    "full_detach": "Full DiscoVLA, beta = 1, teacher detached",
    "full_mean": "Full DiscoVLA, beta = 1, AlignDistill with mean KL",
    "order_module": "Order-aware: full DiscoVLA + temporal module",
    "order": "Order-aware: full DiscoVLA + temporal module + reversed negatives (weight 10)",
    "order_tokens": "Order-aware: + frame positions in IVFusion's video-level attention",
    "order_trend": "Order-aware: full DiscoVLA + time slope pooling + reversed negatives (weight 10)",
    "order_trend_w3": "Order-aware: full DiscoVLA + time slope pooling + reversed negatives (weight 3)",
    "order_trend_module": "Order-aware: full DiscoVLA + temporal module + time slope pooling + reversed "
    "negatives (weight 10)",
}


def label(variant: str) -> str:
    """The table heading of a variant (a named row, or ``beta=X`` of the beta sweep; ``@eN``: N epochs)."""
    base, at, length = variant.partition("@")
    if at:
        return f"{label(base)}, {length[1:]} epochs"
    return LABELS.get(variant) or f"Full DiscoVLA, beta = {variant[5:]}"


TABLE_COLUMNS = {  # summary key -> column heading of the ablation table
    "t2v_R@1": "t2v R@1",
    "t2v_R@5": "t2v R@5",
    "v2t_R@1": "v2t R@1",
    "content_twin_acc": "content-twin acc",
    "order_twin_acc": "order-twin acc",
    "reversal_acc": "reversal test",
    "reversal_ordered_acc": "reversal test (ordered captions)",
    "trainable_parameters": "trained params",
}


def markdown_table(result: dict[str, Any]) -> str:
    """The ablation as a Markdown table: mean ± std over seeds."""
    summary = result["summary"]
    keys, heads = list(TABLE_COLUMNS), list(TABLE_COLUMNS.values())
    lines = ["| Variant | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for v, m in summary.items():
        cells = []
        for k in keys:
            if k not in m:
                cells.append("–")
            elif k == "trainable_parameters":
                cells.append(f"{m[k]['mean']:,.0f}")
            elif m[k]["n"] > 1:
                cells.append(f"{m[k]['mean']:.1f} ± {m[k]['std']:.1f}")
            else:
                cells.append(f"{m[k]['mean']:.1f}")
        lines.append(f"| {label(v)} | " + " | ".join(cells) + " |")
    devices = result.get("devices") or {}
    if devices:
        where = ", ".join(f"{name} ({n} run{'s' * (n != 1)})" for name, n in sorted(devices.items()))
        lines += ["", f"Trained on: {where}."]
    return "\n".join(lines) + "\n"


DIAGNOSTICS = {
    "batch_R@1": "train-batch t2v R@1",
    "val_t2v_R@1": "val t2v R@1",
    "p_img_diag": "P_img diagonal",
    "p_video_diag": "P_video diagonal",
    "p_img_entropy": "P_img entropy (nats)",
    "video": "L_video",
    "img": "L_img",
    "distill": "L_distill",
    "order": "L_order",
}


def diagnostics_table(result: dict[str, Any]) -> str:
    """Per epoch, mean over seeds: the training diagnostics of every trained row (over-fitting? how
    peaked is the teacher?). The test number of each row is in the main table."""
    keys = list(DIAGNOSTICS)
    lines = ["| Variant | epoch | " + " | ".join(DIAGNOSTICS.values()) + " |", "|---" * (len(keys) + 2) + "|"]
    for v, runs in result["runs"].items():
        epochs = [r["epochs"] for r in runs if r.get("epochs")]
        for e in range(min((len(x) for x in epochs), default=0)):
            cells = []
            for k in keys:
                vals = [x[e][k] for x in epochs if k in x[e]]
                cells.append(f"{statistics.fmean(vals):.3g}" if vals else "–")
            lines.append(f"| {label(v)} | {e + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def runs_dir(json_path: str | Path) -> Path:
    """Where the finished runs of a table keep their records: ``metrics/ablation.json`` ->
    ``metrics/ablation_runs/``. Small JSON files, committed with the table, so that an ablation that takes
    longer than one sitting (or one machine) resumes run by run from what was committed."""
    p = Path(json_path)
    return p.with_name(p.stem + "_runs")


def run_record_path(root: str | Path, variant: str, seed: int) -> Path:
    """The record of one (variant, seed): ``<root>/<variant>-seed<seed>.json`` (``beta=0.3``: ``beta0.3``,
    ``order@e8``: ``order_e8``)."""
    return Path(root) / f"{variant.replace('=', '').replace('@', '_')}-seed{seed}.json"


def read_run_record(path: str | Path, checkpoint_key: str) -> dict[str, Any] | None:
    """The recorded result of a finished run, if its checkpoint key is ``checkpoint_key``; else None.

    The key hashes the run's config, input content, frozen weights and training code
    (:func:`discovla.train.run_key`), so a record made by other code or from other inputs is never reused."""
    path = Path(path)
    if not path.exists():
        return None
    record = read_json(path)
    return record if record.get("checkpoint_key") == checkpoint_key else None


def recorded_device(path: str | Path) -> str | None:
    """The device a recorded run trained on (``NVIDIA H200``, ``cpu (x86_64)``), None when the record is
    absent or predates the field (those runs trained on a CPU)."""
    path = Path(path)
    return read_json(path).get("device") if path.exists() else None


def write_run_record(path: str | Path, record: dict[str, Any]) -> None:
    """One finished run's result (test numbers, seconds, checkpoint key, epoch diagnostics), atomically."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)


def write_ablation(result: dict[str, Any], json_path: str | Path, md_path: str | Path) -> None:
    """The result as JSON (every run) and as the two Markdown tables, each written atomically."""
    write_json(json_path, result)
    write_text(
        md_path, markdown_table(result) + "\nPer epoch (mean over seeds):\n\n" + diagnostics_table(result)
    )
