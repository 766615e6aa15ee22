"""Evaluation on one split: the zero-shot baseline and a trained DiscoVLA, video-level similarity only.

Zero-shot: video = normalise(mean of L2-normalised frozen frame embeddings), text = frozen caption
embedding. DiscoVLA: the trained encoders (IVFusion on the frames when enabled); no pseudo captions are
used at test time. Both report t2v / v2t ranks (``discovla.retrieval``), twin accuracy per twin kind and
the reversal test (each caption: its video against the same video played backwards; any dataset).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from discovla.artifacts.features import Features
from discovla.batching import batches
from discovla.images import normalise
from discovla.loader import VideoBatches, make_loader
from discovla.retrieval import retrieval_metrics, reversal_accuracy, twin_accuracy
from discovla.text import states_order


def twin_pairs(features: Features, split: str) -> dict[str, list[tuple[int, int, int]]]:
    """Per twin kind: (caption row, own video index, twin video index) over the split's captions."""
    tw = features.twins
    if tw.empty:
        return {}
    index = {v: i for i, v in enumerate(features.video_ids)}
    caps = features.split_captions(split)
    first_caption = caps.groupby("video_index").apply(lambda g: g.index[0], include_groups=False)
    out: dict[str, list[tuple[int, int, int]]] = {}
    rows = {int(r): k for k, r in enumerate(caps.index)}
    for kind, grp in tw.groupby("kind"):
        pairs = []
        for a, b in zip(grp.video_id, grp.twin_id, strict=True):
            ia, ib = index.get(a), index.get(b)
            if ia is None or ib is None or ia not in first_caption.index:
                continue
            pairs.append((rows[int(first_caption[ia])], ia, ib))
        if pairs:
            out[str(kind)] = pairs
    return out


def rounded(obj: Any, digits: int = 3) -> Any:
    """Floats rounded for metrics files (13.600000000000001 -> 13.6); containers recursively."""
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [rounded(v, digits) for v in obj]
    return obj


def score(
    text_emb: torch.Tensor,
    video_emb: torch.Tensor,
    features: Features,
    split: str,
    chunk_size: int,
    logit_scale: float,
    dsl: bool,
    reversed_emb: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Retrieval metrics (+ DSL block) and twin accuracy for normalised ``text_emb`` [C] x ``video_emb`` [V];
    with ``reversed_emb`` (the same videos, frames reversed) the reversal test (:func:`reversal_test`).

    ``video_emb`` rows follow ``features.split_videos(split)``; ``text_emb`` rows follow the split's captions.
    """
    vids = features.split_videos(split)
    caps = features.split_captions(split)
    local = {int(v): i for i, v in enumerate(vids)}
    target = np.array([local[int(v)] for v in caps.video_index], dtype=np.int64)
    out = retrieval_metrics(
        text_emb,
        video_emb,
        target,
        chunk_size=chunk_size,
        dsl_temperature=logit_scale if dsl else None,
        return_ranks=True,
    )
    if dsl:  # dual-softmax numbers in their own block, never mixed with the plain ones
        out["dsl"] = {"t2v": out.pop("t2v_dsl"), "v2t": out.pop("v2t_dsl")}
    twins = twin_pairs(features, split)
    out["twins"] = {}
    for kind, pairs in twins.items():
        t = torch.tensor([p[0] for p in pairs])
        a = torch.tensor([local[p[1]] for p in pairs])
        b = torch.tensor([local[p[2]] for p in pairs])
        out["twins"][kind] = twin_accuracy(text_emb, video_emb, t, a, b)
    if reversed_emb is not None:
        out["reversal"] = reversal_test(text_emb, video_emb, reversed_emb, target, caps.caption.tolist())
    ranks = out.pop("ranks")
    return {**rounded(out), "ranks": ranks}


def reversal_test(
    text_emb: torch.Tensor,
    video_emb: torch.Tensor,
    reversed_emb: torch.Tensor,
    target: np.ndarray,
    captions: list[str],
) -> dict[str, Any]:
    """The dataset-agnostic order test: for every caption, does its own video outscore the same video with
    its frames reversed (:func:`~discovla.retrieval.reversal_accuracy`, ties count half)? Over all captions
    (``all``) and over the captions that state an order (``ordered``, :func:`~discovla.text.states_order`;
    None when there are none), with both counts."""
    ordered = np.array([states_order(c) for c in captions], dtype=bool)
    out: dict[str, Any] = {
        "all": reversal_accuracy(text_emb, video_emb, reversed_emb, target),
        "ordered": None,
        "captions": len(captions),
        "ordered_captions": int(ordered.sum()),
    }
    if ordered.any():
        out["ordered"] = reversal_accuracy(text_emb[ordered], video_emb, reversed_emb, target[ordered])
    return out


def zeroshot(features: Features, split: str, chunk_size: int, dsl: bool) -> dict[str, Any]:
    """The frozen baseline: mean of normalised frame embeddings against the caption embedding."""
    vids = features.split_videos(split)
    video = F.normalize(F.normalize(features.frame_emb[vids].float(), dim=-1).mean(1), dim=-1)
    caps = features.split_captions(split)
    text = F.normalize(features.cap_emb[torch.tensor(caps.index.to_numpy())].float(), dim=-1)
    frames = F.normalize(features.frame_emb[vids].float().flip(1), dim=-1)  # the frames in reverse order
    rev = F.normalize(frames.mean(1), dim=-1)
    return score(text, video, features, split, chunk_size, features.meta["logit_scale"], dsl, rev)


@torch.no_grad()
def embed_videos(
    model: Any,
    features: Features,
    split: str,
    batch_size: int,
    device: str,
    workers: int = 0,
    reverse: bool = False,
) -> torch.Tensor:
    """Normalised video embeddings of a split with a trained model (rows follow ``split_videos``); with
    ``reverse`` every video's frames are encoded in reverse time order. The pixels are read ``batch_size``
    frames at a time by ``workers`` loader processes."""
    mean, std = features.meta["mean"], features.meta["std"]
    per_batch = max(1, batch_size // features.num_frames)
    plan = VideoBatches(features.pixels, features.split_videos(split), per_batch)
    videos = []
    for raw in make_loader(plan, workers, pin_memory=torch.device(device).type == "cuda"):
        pix = normalise(raw.to(device, non_blocking=True), mean, std)
        if reverse:
            pix = pix.flip(1)
        videos.append(model.video_embedding(model.encode_frames(pix)).float().cpu())
    return torch.cat(videos)


@torch.no_grad()
def embed_split(
    model: Any, features: Features, split: str, batch_size: int, device: str, workers: int = 0
) -> tuple:
    """Normalised (text, video) embeddings of a split with a trained model (video-level only)."""
    caps = features.split_captions(split)
    tokens = features.cap_tokens[torch.tensor(caps.index.to_numpy())]
    texts = [
        F.normalize(model.encode_text(tokens[sl].to(device)).float(), dim=-1).cpu()
        for sl in batches(len(tokens), batch_size)
    ]
    return torch.cat(texts), embed_videos(model, features, split, batch_size, device, workers)


def evaluate_model(
    model: Any,
    features: Features,
    split: str,
    batch_size: int,
    chunk_size: int,
    dsl: bool,
    device: str = "cpu",
    workers: int = 0,
    reversal: bool = True,
) -> dict[str, Any]:
    """Test-split metrics of a trained model; with ``reversal`` also the reversal test (one more encoding
    of every video, its frames reversed)."""
    model.eval()
    text, video = embed_split(model, features, split, batch_size, device, workers)
    rev = (
        embed_videos(model, features, split, batch_size, device, workers, reverse=True) if reversal else None
    )
    return score(text, video, features, split, chunk_size, float(model.logit_scale), dsl, rev)


def validation_monitor(
    features: Features, batch_size: int, chunk_size: int, workers: int = 0
) -> Callable[[int, Any], dict[str, float]]:
    """An ``on_epoch`` callback for training: t2v / v2t R@1 on the val split (monitoring, never selection).
    Returns nothing when the cache has no val videos."""

    def monitor(epoch: int, model: Any) -> dict[str, float]:
        if len(features.split_videos("val")) == 0:
            return {}
        device = str(next(iter(model.trainable_parameters())).device)
        m = evaluate_model(model, features, "val", batch_size, chunk_size, False, device, workers, False)
        return {"val_t2v_R@1": m["t2v"]["R@1"], "val_v2t_R@1": m["v2t"]["R@1"]}

    return monitor
