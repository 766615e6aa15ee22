"""The report's plots (matplotlib, Agg canvas, PNG bytes) from the pipeline's plot CSVs under ``metrics/``.

Figures are built with :class:`matplotlib.figure.Figure` on an Agg canvas, never through ``pyplot``: no
global backend or figure state, nothing needs a display. PNGs carry no software-version metadata, so the
same CSV gives the same bytes with the same matplotlib.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

LOSS_TERMS = {
    "loss": "total loss",
    "video": "L_video (video-text)",
    "img": "L_img (PImgAlign)",
    "distill": "L_distill (AlignDistill)",
}
MODEL_NAMES = {"zeroshot": "zero-shot", "discovla": "DiscoVLA"}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # the Agg canvas, whatever MPLBACKEND says
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def train_curve_png(curve: pd.DataFrame) -> bytes:
    """Loss terms per optimiser step (raw, faint, and a running mean) with epoch boundaries; the learning
    rate beside it. ``curve`` has the columns of ``metrics/train_curve.csv`` (step, epoch, lr, loss, ...)."""
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax, ax_lr = fig.subplots(1, 2, width_ratios=[3, 1])
    step = curve["step"].to_numpy()
    window = max(1, len(curve) // 40)
    for i, (col, name) in enumerate(LOSS_TERMS.items()):
        if col not in curve or not np.any(curve[col].to_numpy()):
            continue
        colour = f"C{i}"
        ax.plot(step, curve[col], color=colour, alpha=0.25, lw=0.8)
        smooth = curve[col].rolling(window, min_periods=1).mean()
        ax.plot(step, smooth, color=colour, lw=1.8, label=name)
    if "epoch" in curve and len(curve):
        ends = curve.groupby("epoch")["step"].max().to_numpy()[:-1]
        for x in ends:
            ax.axvline(x, color="0.6", ls=":", lw=1)
    ax.set(xlabel="step", ylabel="loss", title=f"training losses (running mean over {window} steps)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    if "lr" in curve:
        ax_lr.plot(step, curve["lr"], color="C4")
    ax_lr.set(xlabel="step", title="learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax_lr.grid(alpha=0.3)
    return _png(fig)


def recall_curve_png(recall: pd.DataFrame) -> bytes:
    """Recall@K against K (log axis), one line per (model, direction) column of
    ``metrics/recall_at_k.csv`` (``k, zeroshot_t2v, ...``): colour per model, solid t2v, dashed v2t."""
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    k = recall["k"].to_numpy()
    models = list(dict.fromkeys(c.rsplit("_", 1)[0] for c in recall.columns if c != "k"))
    for col in (c for c in recall.columns if c != "k"):
        model, direction = col.rsplit("_", 1)
        ax.plot(
            k,
            recall[col],
            color=f"C{models.index(model)}",
            ls="-" if direction == "t2v" else "--",
            marker="o",
            ms=4,
            label=f"{MODEL_NAMES.get(model, model)} {direction}",
        )
    ax.set_xscale("log")
    ax.set_xticks(k, [str(int(v)) for v in k])
    ax.minorticks_off()
    ax.set(xlabel="K", ylabel="recall@K (%)", ylim=(0, 100), title="recall@K on the test split")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)
