"""The run report: one self-contained HTML page from what the pipeline produced.

Inputs: the metrics directory (every file optional: a missing one is said so on the page), the frames
store, the feature cache, the trained adapters and the params. The trained model is rebuilt from the
adapters (their ``config.json`` names the backbone), so the qualitative results are the evaluated model's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from discovla.artifacts.features import load_features
from discovla.config import Params
from discovla.errors import DiscoVLAError
from discovla.io import write_text
from discovla.report import qualitative as ql
from discovla.report.identity import describe_commit, git_state, params_diff
from discovla.report.page import img, note, page, table
from discovla.report.plots import recall_curve_png, train_curve_png
from discovla.report.tables import (
    ablation_section,
    epochs_table,
    load_metrics,
    other_metrics_section,
    retrieval_section,
)
from discovla.retriever import Retriever

TITLE = "DiscoVLA run report"


class ReportError(DiscoVLAError, ValueError):
    """A report input that is missing, with the stage to run."""


def load_trained_model(adapters: str | Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """The trained DiscoVLA of ``adapters`` (loaded as :meth:`discovla.retriever.Retriever.load` does) and
    its ``config.json`` (backbone, pretrained, context_length, model, ...)."""
    path = Path(adapters) / "config.json"
    if not path.is_file():
        raise ReportError(f"{path} not found: run the train stage first")
    return Retriever.load(adapters, device=device).model, json.loads(path.read_text())


def _value(v: Any) -> str:
    """A param value as params.yaml spells it."""
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    return str(v)


def identity_section(
    params: Params, info: dict[str, Any], meta: dict[str, Any], metrics: dict[str, Any], repo: Path
) -> tuple[str, dict[str, str]]:
    """The run's identity table and params-vs-defaults table; also the few facts for the page header."""
    captioner = metrics.get("captions", {}).get("captioner")
    facts = {
        "dataset": f"{params.data.dataset} ({params.data.root})",
        "backbone": f"{info.get('backbone')} ({info.get('pretrained') or 'random init'})",
        "captioner": captioner or f"{params.captioner.model} (from params.yaml)",
        "commit": describe_commit(git_state(repo)),
    }
    model = ", ".join(f"{k}={_value(v)}" for k, v in info.get("model", {}).items())
    rows = [
        ["dataset", facts["dataset"]],
        ["backbone (adapters)", facts["backbone"]],
        ["backbone (feature cache)", f"{meta.get('backbone')} ({meta.get('pretrained') or 'random init'})"],
        ["captioner", facts["captioner"]],
        ["model", model],
        ["trainable parameters", info.get("trainable_parameters")],
        ["epochs", info.get("epochs")],
        ["frames per video", meta.get("num_frames")],
        ["frame size (pixels)", meta.get("image_size")],
        ["context length", info.get("context_length")],
        ["git commit", facts["commit"]],
    ]
    parts = [table([], rows, table_id="identity")]
    if info.get("backbone") != meta.get("backbone") or info.get("pretrained") != meta.get("pretrained"):
        parts.append(note("The adapters and the feature cache name different backbones.", "warn"))
    diff = params_diff(params)
    parts.append("<h3>Params that differ from the defaults (discovla/config.py)</h3>")
    if diff:
        rows = [[k, _value(v), _value(d)] for k, v, d in diff]
        parts.append(table(["param", "value", "default"], rows, table_id="params-diff"))
    else:
        parts.append(note("Every param is at its default."))
    return "".join(parts), facts


def _curves(metrics_dir: Path, metrics: dict[str, Any]) -> str:
    parts = []
    for name, fn, alt in (
        ("train_curve.csv", train_curve_png, "training losses per step"),
        ("recall_at_k.csv", recall_curve_png, "recall at K, zero-shot and trained"),
    ):
        path = metrics_dir / name
        if path.is_file():
            parts.append(img(fn(pd.read_csv(path)), alt, "plot"))
        else:
            parts.append(note(f"{path} not found.", "warn"))
    if "train" in metrics:
        parts.append(epochs_table(metrics["train"]))
    return "".join(parts)


def _qualitative(
    scores: ql.SplitScores,
    metrics: dict[str, Any],
    strips: dict[str, ql.Strip],
    sample: list[ql.Query],
    worst: list[ql.Query],
    seed: int,
) -> str:
    r1 = 100.0 * float((scores.ranks <= 1).mean())
    reported = metrics.get("retrieval", {}).get("t2v", {}).get("R@1")
    same = reported is None or abs(reported - r1) < 0.05
    text = (
        f"{scores.split} split: {len(scores.ranks)} captions, {len(scores.video_ids)} videos. Scores are "
        f"cosine similarities of the trained model; t2v R@1 recomputed from the adapters: {r1:.1f}%"
    )
    if reported is not None:
        text += f" (metrics/retrieval.json: {reported:.1f}%)"
    if not same:
        text += ". They differ: the metrics are stale (rerun the evaluate stage)"
    return "".join(
        [
            note(text + ".", "note" if same else "warn"),
            f"<h3>Random queries (seed {seed})</h3>",
            ql.queries_html(sample, strips),
            "<h3>Worst-ranked queries (the correct video ranked lowest)</h3>",
            ql.queries_html(worst, strips),
        ]
    )


def _reversal(
    metrics: dict[str, Any], cases: list[dict[str, Any]], strips: dict[str, Any], backwards: dict[str, Any]
) -> str:
    rev = metrics.get("retrieval", {}).get("reversal") or {}
    summary = ""
    if rev:
        ordered = (
            f", {rev['ordered']:.1f}% on the {rev['ordered_captions']} that state an order"
            if rev.get("ordered") is not None
            else ""
        )
        summary = (
            f" Reversal test (metrics/retrieval.json): {rev['all']:.1f}% of {rev['captions']} captions"
            f"{ordered}."
        )
    text = (
        "Captions that state an order, each scored against its own video as it plays and against the same "
        "frames in reverse order (both strips read left to right). A model blind to frame order scores "
        "both alike." + summary
    )
    return note(text) + ql.reversal_html(cases, strips, backwards)


def build_report(
    metrics_dir: str | Path,
    frames_dir: str | Path,
    features_dir: str | Path,
    adapters_dir: str | Path,
    params: Params,
    *,
    num_queries: int = 6,
    seed: int = 0,
    split: str = "test",
    top_k: int = 5,
    strip_frames: int = 4,
    device: str = "cpu",
    repo: str | Path = ".",
) -> str:
    """The report page as one HTML string (images inline as PNG ``data:`` URIs)."""
    model, info = load_trained_model(adapters_dir, device)
    metrics_dir = Path(metrics_dir)
    metrics = load_metrics(metrics_dir)
    features = load_features(features_dir)
    ev = params.evaluate
    scores = ql.score_split(model, features, split, ev.batch_size, ev.chunk_size, device)
    sample = ql.queries(scores, ql.sample_rows(scores, num_queries, seed), top_k)
    worst = ql.queries(scores, ql.worst_rows(scores, num_queries), top_k)
    confusions = ql.twin_confusions(scores, num_queries)
    shown = {v for q in sample + worst for v in [q.video_id, *(t[0] for t in q.top)]}
    shown |= {v for c in confusions.values() for w in c["worst"] for v in (w[1], w[3])}
    backwards_cases = ql.reversal_cases(scores, num_queries, seed)
    shown |= {c["video_id"] for c in backwards_cases}
    strips = ql.frame_strips(frames_dir, shown, per_video=strip_frames)
    backwards = ql.frame_strips(
        frames_dir, {c["video_id"] for c in backwards_cases}, per_video=strip_frames, reverse=True
    )

    ident, facts = identity_section(params, info, features.meta, metrics, Path(repo))
    sections = [
        ("metrics", "Retrieval metrics", retrieval_section(metrics)),
        ("curves", "Training and recall curves", _curves(metrics_dir, metrics)),
        ("qualitative", "Qualitative results", _qualitative(scores, metrics, strips, sample, worst, seed)),
    ]
    if confusions:
        reported = metrics.get("retrieval", {}).get("twins", {})
        sections.append(("twins", "Twins the model confuses", ql.twins_html(confusions, reported, strips)))
    if backwards_cases:
        sections.append(
            ("reversal", "Played backwards", _reversal(metrics, backwards_cases, strips, backwards))
        )
    if "ablation" in metrics:
        sections.append(
            ("ablation", "Ablation (metrics/ablation.json)", ablation_section(metrics["ablation"]))
        )
    if "ablation_static" in metrics:  # discovla ablate --captions static --out metrics/ablation_static.json
        title = "Ablation, static captions (metrics/ablation_static.json)"
        sections.append(
            ("ablation-static", title, ablation_section(metrics["ablation_static"], "ablation-static"))
        )
    sections.append(("run", "Run identity", ident))
    others = other_metrics_section(metrics)
    if others:
        sections.append(
            ("stages", "Other stages", note("Every value of the stages' metrics files.") + others)
        )
    subtitle = f"{facts['dataset']} · {facts['backbone']} · commit {facts['commit']}"
    return page(TITLE, subtitle, sections)


def write_report(
    out: str | Path,
    metrics_dir: str | Path,
    frames_dir: str | Path,
    features_dir: str | Path,
    adapters_dir: str | Path,
    params: Params,
    **options: Any,
) -> Path:
    """:func:`build_report` (``options``: its keyword arguments) written atomically to ``out``."""
    write_text(out, build_report(metrics_dir, frames_dir, features_dir, adapters_dir, params, **options))
    return Path(out)
