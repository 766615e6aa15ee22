"""Metrics tables of the report, from the JSON files under ``metrics/`` (each one optional)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from discovla.artifacts.ablation import DIAGNOSTICS, TABLE_COLUMNS, label
from discovla.io import read_json
from discovla.report.identity import flatten
from discovla.report.page import Raw, details, note, table

RANK_COLUMNS = ("R@1", "R@5", "R@10", "MdR", "MnR")
DIRECTIONS = {"t2v": "text → video", "v2t": "video → text"}
EPOCH_COLUMNS = {
    "epoch": "epoch",
    "loss": "loss",
    "video": "L_video",
    "img": "L_img",
    "distill": "L_distill",
    "batch_R@1": "train-batch R@1",
    "val_t2v_R@1": "val t2v R@1",
    "val_v2t_R@1": "val v2t R@1",
    "p_img_diag": "P_img diagonal",
    "p_video_diag": "P_video diagonal",
    "seconds": "seconds",
}
OTHER_METRICS = ("shapes", "frames", "captions", "pretrain_clip", "pretrain_captioner")


def merge(record: Any, info: Any) -> Any:
    """``record`` with ``info`` put back where it was taken from: mappings key by key, lists of mappings
    item by item; ``record``'s own values win."""
    if isinstance(record, dict) and isinstance(info, dict):
        return {**info, **{k: merge(v, info[k]) if k in info else v for k, v in record.items()}}
    if isinstance(record, list) and isinstance(info, list) and len(record) == len(info):
        return [merge(a, b) for a, b in zip(record, info, strict=True)]
    return record


def load_metrics(metrics_dir: str | Path) -> dict[str, Any]:
    """Every ``*.json`` under ``metrics_dir`` by stem (``retrieval``, ``zeroshot``, ``train``, ...), each
    with its run information merged back in when a stage writes it apart (``info/<stem>.json``: timings,
    device; kept out of the DVC metrics so that ``dvc metrics diff`` shows only real changes)."""
    root = Path(metrics_dir)
    out: dict[str, Any] = {p.stem: read_json(p) for p in sorted(root.glob("*.json"))}
    for p in sorted((root / "info").glob("*.json")):
        out[p.stem] = merge(out.get(p.stem, {}), read_json(p))
    return out


def retrieval_table(rows: dict[str, dict[str, Any]], table_id: str) -> Raw:
    """One row per model name of ``rows`` (``{"t2v": {...}, "v2t": {...}}`` blocks): R@1/5/10, MdR, MnR."""
    head = ["model", *[c for _ in DIRECTIONS for c in RANK_COLUMNS]]
    groups = [("", 1), *[(f"{d} ({name})", len(RANK_COLUMNS)) for d, name in DIRECTIONS.items()]]
    body = [
        [name, *[block.get(d, {}).get(c) for d in DIRECTIONS for c in RANK_COLUMNS]]
        for name, block in rows.items()
    ]
    return table(head, body, table_id=table_id, groups=groups)


def _queries(block: dict[str, Any]) -> str:
    n = {d: block.get(d, {}).get("queries") for d in DIRECTIONS}
    return ", ".join(f"{n[d]} {d} queries" for d in DIRECTIONS if n[d] is not None)


def retrieval_section(metrics: dict[str, Any]) -> str:
    """Zero-shot vs trained (plain similarity), the DSL block on its own, and twin accuracies."""
    trained = metrics.get("retrieval")
    if trained is None:
        return note("metrics/retrieval.json not found: run the evaluate stage.", "warn")
    zs = metrics.get("zeroshot") or trained.get("zeroshot") or {}
    plain = {"zero-shot (frozen CLIP)": zs, "DiscoVLA (trained)": trained} if zs else {"DiscoVLA": trained}
    parts = [
        "<h3>Test split, plain cosine similarity</h3>",
        retrieval_table(plain, "metrics-plain"),
        note(
            f"R@K in percent (higher is better), MdR / MnR median / mean rank (lower is better); "
            f"{_queries(trained)}; ties ranked pessimistically."
        ),
    ]
    dsl = {name: block["dsl"] for name, block in plain.items() if "dsl" in block}
    if dsl:
        parts += [
            "<h3>Dual softmax (DSL) at inference</h3>",
            retrieval_table(dsl, "metrics-dsl"),
            note(
                "DSL rescales each similarity by a softmax over the other direction (uses the whole test "
                "set at once); reported apart from the plain numbers, never mixed with them."
            ),
        ]
    kinds = list(dict.fromkeys([*zs.get("twins", {}), *trained.get("twins", {})]))
    if kinds:
        rows = []
        for kind in kinds:
            a, b = zs.get("twins", {}).get(kind), trained.get("twins", {}).get(kind)
            rows.append([f"{kind} twins", a, b, None if a is None or b is None else b - a])
        parts += [
            "<h3>Twin accuracy</h3>",
            table(["twin kind", "zero-shot", "DiscoVLA", "Δ"], rows, table_id="metrics-twins"),
            note(
                "How often a caption scores its own video above its twin (order: the time reversal; "
                "content: the same story with one detail changed), in percent; chance is 50."
            ),
        ]
    revs = {name: block.get("reversal") for name, block in plain.items() if block.get("reversal")}
    if revs:
        rows = []
        for key, what in (("all", "all test captions"), ("ordered", "captions that state an order")):
            vals = [revs.get(n, {}).get(key) for n in plain]
            n_key = "captions" if key == "all" else "ordered_captions"
            count = next(iter(revs.values()))[n_key]
            rows.append([f"{what} ({count})", *vals])
        parts += [
            "<h3>Reversal test</h3>",
            table(["captions", *plain], rows, table_id="metrics-reversal"),
            note(
                "How often a caption scores its own video above the same video played backwards (its frames "
                "in reverse order), in percent; ties count one half, so an order-blind model scores 50. "
                "Order-stating captions contain a word such as then, after, before, first or finally "
                "(discovla/text.py: ORDER_WORDS)."
            ),
        ]
    return "".join(parts)


def epochs_table(train: dict[str, Any]) -> str:
    """The per-epoch rows of ``metrics/train.json`` (losses, train-batch and validation recall)."""
    epochs = train.get("per_epoch") or []
    cols = [c for c in EPOCH_COLUMNS if any(c in e for e in epochs)]
    if not cols:
        return ""
    rows = [[e.get(c) for c in cols] for e in epochs]
    facts = [("trainable_parameters", "{:,} trainable parameters"), ("seconds", "{} s")]
    facts += [("samples_per_s", "{} samples/s"), ("device", "on {}")]
    info = ", ".join(f.format(train[k]) for k, f in facts if k in train)
    return "".join(
        [
            "<h3>Per epoch (metrics/train.json)</h3>",
            table([EPOCH_COLUMNS[c] for c in cols], rows, table_id="train-epochs", digits=3),
            note(info),
        ]
    )


def _mean_std(cell: dict[str, Any] | None, key: str) -> object:
    if cell is None:
        return None
    if key == "trainable_parameters":
        return int(round(cell["mean"]))
    if cell.get("n", 1) > 1:
        return f"{cell['mean']:.1f} ± {cell['std']:.1f}"
    return float(cell["mean"])


def ablation_section(ablation: dict[str, Any], table_id: str = "ablation") -> str:
    """The ablation summary (mean ± sample std over seeds) and, folded, its per-epoch diagnostics."""
    summary = ablation.get("summary", {})
    rows = [[label(v), *[_mean_std(m.get(k), k) for k in TABLE_COLUMNS]] for v, m in summary.items()]
    seeds = ", ".join(str(s) for s in ablation.get("seeds", []))
    parts = [
        table(["variant", *TABLE_COLUMNS.values()], rows, table_id=table_id),
        note(
            f"Test split, last epoch; seeds {seeds}; {ablation.get('epochs', '?')} epochs; "
            f"sampling {ablation.get('sampling', '?')}. Mean ± sample standard deviation over seeds."
        ),
    ]
    diag = []
    for v, runs in ablation.get("runs", {}).items():
        epochs = [r["epochs"] for r in runs if r.get("epochs")]
        for e in range(min((len(x) for x in epochs), default=0)):
            vals = [[x[e][k] for x in epochs if k in x[e]] for k in DIAGNOSTICS]
            diag.append([label(v), e + 1, *[statistics.fmean(x) if x else None for x in vals]])
    if diag:
        head = ["variant", "epoch", *DIAGNOSTICS.values()]
        parts.append(
            details("Per epoch, mean over seeds", table(head, diag, table_id=f"{table_id}-epochs", digits=3))
        )
    return "".join(parts)


def other_metrics_section(metrics: dict[str, Any]) -> str:
    """The other stages' metrics files (world, frames, captions, pretraining), folded, key by key."""
    parts = []
    for stem in OTHER_METRICS:
        if stem not in metrics:
            continue
        flat = flatten(metrics[stem])
        rows = [[k, v] for k, v in flat.items()]
        parts.append(details(f"metrics/{stem}.json", table(["key", "value"], rows, digits=4)))
    return "".join(parts)
