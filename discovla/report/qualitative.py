"""Qualitative results: what the trained model retrieves for single captions, shown as frame strips.

Similarities come from :func:`discovla.evaluate.embed_split` (the evaluation's own normalised embeddings)
and ranks from :func:`discovla.retrieval.retrieval_metrics` (its pessimistic tie rule), so every rank shown
here is the rank the metrics count. Frames come from the frames store through its reader, which reads
only the rows of the videos shown (:func:`discovla.artifacts.frames.read_frame_images`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from discovla.artifacts.features import Features, FeaturesError
from discovla.artifacts.frames import read_frame_images
from discovla.evaluate import embed_split, embed_videos, twin_pairs
from discovla.images import encode_png
from discovla.report.page import Raw, esc, img, note
from discovla.retrieval import retrieval_metrics
from discovla.text import states_order


@dataclass
class SplitScores:
    """A split scored by the trained model: embeddings in ``embed_split`` order and t2v ranks."""

    split: str
    captions: pd.DataFrame  # the split's caption rows (caption, video_id, ...), in text_emb order
    video_ids: list[str]  # the split's videos, in video_emb order
    text: torch.Tensor  # [C, D] normalised
    video: torch.Tensor  # [V, D] normalised
    target: np.ndarray  # [C] position in video_ids of each caption's own video
    ranks: np.ndarray  # [C] 1-based t2v rank of the own video
    twins: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)  # kind: (caption, own, twin)
    reversed: torch.Tensor | None = None  # [V, D] normalised: each video with its frames in reverse order


@dataclass
class Query:
    caption: str
    video_id: str  # the correct video
    rank: int
    score: float  # similarity to the correct video
    top: list[tuple[str, float]]  # the top-k videos and their similarities, best first


@dataclass
class Strip:
    png: bytes
    frames: list[int]
    timestamps: list[float]


def score_split(
    model: Any, features: Features, split: str, batch_size: int, chunk_size: int, device: str = "cpu"
) -> SplitScores:
    """Embed ``split`` with the trained ``model`` and rank every caption's own video among the split's."""
    if len(features.split_captions(split)) == 0 or len(features.split_videos(split)) == 0:
        raise FeaturesError(f"the feature cache has no {split} captions or videos: nothing to show")
    model.eval()
    text, video = embed_split(model, features, split, batch_size, device)
    backwards = embed_videos(model, features, split, batch_size, device, reverse=True)
    vids = features.split_videos(split)
    caps = features.split_captions(split)
    local = {int(v): i for i, v in enumerate(vids)}
    target = np.array([local[int(v)] for v in caps.video_index], dtype=np.int64)
    ranks = retrieval_metrics(text, video, target, chunk_size=chunk_size, return_ranks=True)["ranks"]["t2v"]
    twins = {
        kind: [(c, local[a], local[b]) for c, a, b in pairs if a in local and b in local]
        for kind, pairs in twin_pairs(features, split).items()
    }
    return SplitScores(
        split=split,
        captions=caps.reset_index(drop=True),
        video_ids=[features.video_ids[int(v)] for v in vids],
        text=text,
        video=video,
        target=target,
        ranks=np.asarray(ranks),
        twins={k: v for k, v in twins.items() if v},
        reversed=backwards,
    )


def sample_rows(scores: SplitScores, n: int, seed: int) -> list[int]:
    """``n`` caption rows drawn without replacement with ``seed`` (in caption order)."""
    rng = np.random.default_rng(seed)
    return sorted(
        int(r) for r in rng.choice(len(scores.ranks), size=min(n, len(scores.ranks)), replace=False)
    )


def worst_rows(scores: SplitScores, n: int) -> list[int]:
    """The ``n`` caption rows whose own video ranks lowest (highest rank; caption order among equals)."""
    return [int(r) for r in np.argsort(-scores.ranks, kind="stable")[:n]]


def queries(scores: SplitScores, rows: list[int], k: int) -> list[Query]:
    """Each row's caption, its correct video and rank, and its top-``k`` videos (equal scores: the correct
    video after the others, as the rank counts it)."""
    if not rows:
        return []
    sims = (scores.text[rows] @ scores.video.T).double().numpy()
    out = []
    for row, s in zip(rows, sims, strict=True):
        own = int(scores.target[row])
        is_own = np.arange(len(s)) == own
        order = np.lexsort((is_own, -s))[:k]
        out.append(
            Query(
                caption=str(scores.captions.caption.iloc[row]),
                video_id=scores.video_ids[own],
                rank=int(scores.ranks[row]),
                score=float(s[own]),
                top=[(scores.video_ids[int(j)], float(s[j])) for j in order],
            )
        )
    return out


def twin_confusions(scores: SplitScores, n: int) -> dict[str, dict[str, Any]]:
    """Per twin kind: pair counts, confusions (twin scored above the own video), ties, the accuracy (ties
    count one half, as :func:`discovla.retrieval.twin_accuracy`), and the ``n`` worst confusions as
    ``(caption, own video, own score, twin video, twin score)`` by decreasing margin."""
    out = {}
    for kind, pairs in scores.twins.items():
        c, a, b = (torch.tensor([p[i] for p in pairs]) for i in range(3))
        t = scores.text[c].double()
        own = (t * scores.video[a].double()).sum(1).numpy()
        twin = (t * scores.video[b].double()).sum(1).numpy()
        confused = np.flatnonzero(twin > own)
        worst = confused[np.argsort(-(twin - own)[confused], kind="stable")][:n]
        out[kind] = {
            "pairs": len(pairs),
            "confused": len(confused),
            "ties": int(np.sum(twin == own)),
            "accuracy": 100.0 * (np.sum(own > twin) + 0.5 * np.sum(own == twin)) / len(pairs),
            "worst": [
                (
                    str(scores.captions.caption.iloc[int(c[i])]),
                    scores.video_ids[int(a[i])],
                    float(own[i]),
                    scores.video_ids[int(b[i])],
                    float(twin[i]),
                )
                for i in worst
            ],
        }
    return out


def reversal_cases(scores: SplitScores, n: int, seed: int, tie_tol: float = 1e-5) -> list[dict[str, Any]]:
    """``n`` captions that state an order (a seeded sample, in caption order; all captions when none
    does), each with its own video's score played forwards and backwards (the frames reversed), and which
    won (a difference within ``tie_tol`` is a tie, as :func:`discovla.retrieval.reversal_accuracy`)."""
    if scores.reversed is None or len(scores.captions) == 0:
        return []
    texts = scores.captions.caption.astype(str).tolist()
    rows = [i for i, c in enumerate(texts) if states_order(c)] or list(range(len(texts)))
    rng = np.random.default_rng(seed)
    picks = sorted(int(r) for r in rng.choice(rows, size=min(n, len(rows)), replace=False))
    out = []
    for r in picks:
        own = int(scores.target[r])
        t = scores.text[r].double()
        fwd, bwd = float(t @ scores.video[own].double()), float(t @ scores.reversed[own].double())
        outcome = "tie" if abs(fwd - bwd) <= tie_tol else ("forwards" if fwd > bwd else "backwards")
        out.append(
            {
                "caption": texts[r],
                "video_id": scores.video_ids[own],
                "forwards": fwd,
                "backwards": bwd,
                "higher": outcome,
            }
        )
    return out


def reversal_html(cases: list[dict[str, Any]], strips: dict[str, Strip], backwards: dict[str, Strip]) -> Raw:
    """Each case: the caption, its video's frames forwards and backwards, both scores, which won."""
    cards = []
    for c in cases:
        won = {
            "forwards": "the video as it plays",
            "backwards": "the reversed video",
            "tie": "neither (a tie)",
        }
        cards.append(
            f'<div class="card reversal" data-higher="{c["higher"]}">'
            f'<p class="caption">“{esc(c["caption"])}”</p>'
            f'<div class="pair"><div class="own"><p>forwards: {c["forwards"]:.3f}</p>'
            f"{strip_html(strips, c['video_id'])}</div>"
            f'<div class="other"><p>backwards: {c["backwards"]:.3f}</p>'
            f"{strip_html(backwards, c['video_id'])}</div></div>"
            f'<p class="note">scored higher: {won[c["higher"]]}</p></div>'
        )
    return Raw('<div class="cards">' + "".join(cards) + "</div>")


def frame_strips(
    frames_dir: str | Path,
    video_ids: set[str],
    per_video: int = 4,
    min_height: int = 64,
    reverse: bool = False,
) -> dict[str, Strip]:
    """For each of ``video_ids`` found in the frames store: ``per_video`` of its sampled frames, evenly
    spaced, side by side in one PNG (2-pixel gaps), enlarged by a whole factor (nearest neighbour) to at
    least ``min_height`` pixels high; with ``reverse`` the last frame first (the video played backwards).
    Videos the store lacks are left out."""
    keys, batch = read_frame_images(frames_dir, video_ids)  # only the shown videos' rows are read
    if keys.empty:
        return {}
    chosen: dict[str, list[int]] = {}
    for vid, grp in keys.groupby("video_id", sort=False):
        frames = sorted(int(f) for f in grp.frame)
        picks = np.unique(np.linspace(0, len(frames) - 1, max(1, per_video)).round().astype(int))
        chosen[str(vid)] = [frames[i] for i in picks][:: -1 if reverse else 1]
    stamps = {
        (str(v), int(f)): float(t) for v, f, t in zip(keys.video_id, keys.frame, keys.timestamp, strict=True)
    }
    images = {
        (str(v), int(f)): batch[i] for i, (v, f) in enumerate(zip(keys.video_id, keys.frame, strict=True))
    }
    out = {}
    for vid, frames in chosen.items():
        tiles = [images[(vid, f)] for f in frames]
        h = max(t.shape[0] for t in tiles)
        scale = max(1, math.ceil(min_height / h))
        gap = np.full((h * scale, 2, 3), 255, np.uint8)
        row: list[np.ndarray] = []
        for t in tiles:
            big = t.repeat(scale, axis=0).repeat(scale, axis=1)
            pad = np.full((h * scale - big.shape[0], big.shape[1], 3), 255, np.uint8)
            row += [np.concatenate([big, pad]), gap]
        out[vid] = Strip(
            encode_png(np.concatenate(row[:-1], axis=1)), frames, [stamps[(vid, f)] for f in frames]
        )
    return out


def strip_html(strips: dict[str, Strip], video_id: str) -> str:
    s = strips.get(video_id)
    if s is None:
        return f'<span class="note">no frames of {esc(video_id)} in the frames store</span>'
    times = ", ".join(f"{t:.2f}" for t in s.timestamps)
    return img(s.png, f"frames of {video_id}", "strip", f"{video_id}: frames {s.frames} at {times} s")


def query_card(q: Query, strips: dict[str, Strip]) -> str:
    """A caption and its top-k videos (rank, score, frames), the correct one marked; when the correct video
    is not among them, it is added below with its own rank and score."""
    rows = []
    for i, (vid, s) in enumerate(q.top, 1):
        hit = vid == q.video_id
        mark = "✓ correct" if hit else ""
        rows.append(
            f'<tr class="result{" correct" if hit else ""}"><td class="num">#{i}</td>'
            f'<td class="num">{s:.3f}</td><td>{strip_html(strips, vid)}</td>'
            f'<td><code>{esc(vid)}</code></td><td class="mark">{mark}</td></tr>'
        )
    if all(vid != q.video_id for vid, _ in q.top):
        rows.append(
            f'<tr class="truth"><td class="num">#{q.rank}</td><td class="num">{q.score:.3f}</td>'
            f"<td>{strip_html(strips, q.video_id)}</td><td><code>{esc(q.video_id)}</code></td>"
            '<td class="mark">correct video</td></tr>'
        )
    return (
        f'<div class="card query" data-video="{esc(q.video_id)}" data-rank="{q.rank}">'
        f'<p class="caption">“{esc(q.caption)}”</p>'
        f'<p class="note">correct video <code>{esc(q.video_id)}</code> at rank {q.rank} '
        f"(similarity {q.score:.3f})</p><table>{''.join(rows)}</table></div>"
    )


def queries_html(qs: list[Query], strips: dict[str, Strip]) -> Raw:
    return Raw('<div class="cards">' + "".join(query_card(q, strips) for q in qs) + "</div>")


def twins_html(conf: dict[str, dict[str, Any]], reported: dict[str, float], strips: dict[str, Strip]) -> Raw:
    """Per twin kind: the counts, then each confused pair with both strips and both scores."""
    parts = []
    for kind, c in conf.items():
        rep = reported.get(kind)
        rep_txt = f" (metrics file: {rep:.1f}%)" if rep is not None else ""
        parts.append(f"<h3>{esc(kind)} twins</h3>")
        parts.append(
            note(
                f"{c['confused']} of {c['pairs']} caption-twin pairs confused (twin scored above "
                f"the caption's own video), {c['ties']} ties; twin accuracy {c['accuracy']:.1f}%"
                f"{rep_txt}. The {len(c['worst'])} largest confusions:"
            )
        )
        cards = []
        for caption, own, s_own, twin, s_twin in c["worst"]:
            cards.append(
                f'<div class="card twin" data-kind="{esc(kind)}"><p class="caption">“{esc(caption)}”</p>'
                f'<div class="pair"><div class="own"><p>own video <code>{esc(own)}</code>: '
                f"{s_own:.3f}</p>{strip_html(strips, own)}</div>"
                f'<div class="other"><p>twin <code>{esc(twin)}</code>: {s_twin:.3f} '
                f"(+{s_twin - s_own:.3f})</p>{strip_html(strips, twin)}</div></div></div>"
            )
        if cards:
            parts.append('<div class="cards">' + "".join(cards) + "</div>")
    return Raw("".join(parts))
