"""Retrieval metrics for text-video (or text-image) similarity, computed in chunks of text rows.

Protocol (one similarity matrix ``S[caption, video]``; several captions may share a video):

- **t2v**: every caption is a query; its correct item is its own video.
- **v2t**: every video that has at least one caption is a query; the items are all captions and the
  video counts as found at the rank of its best-ranked own caption. Its other own captions are neither
  hits nor competitors.
- **Ties** are broken pessimistically: rank = 1 + #(wrong items whose score >= the correct item's score).
  For v2t the "correct score" is the highest score among the video's own captions. Ties therefore never
  inflate recall, and a query whose whole row is constant gets the worst possible rank.
- R@K in percent, MdR the median rank (the mean of the two middle ranks for an even count), MnR the mean.
- **DSL** (dual softmax, CAMoE), reported under its own key and never mixed into the plain numbers: for
  t2v, ``S'[c, v] = S[c, v] * softmax_c(T * S[:, v])`` (softmax over all captions of the video's column);
  for v2t, ``S'[c, v] = S[c, v] * softmax_v(T * S[c, :])`` (softmax over all videos of the caption's row),
  with ``T`` the model's logit scale. The column softmax needs the whole matrix: it is computed in two
  chunked passes (column log-sum-exp first, then the rows).

Memory: only ``chunk_size x num_videos`` similarities (plus a few vectors) exist at a time; the matrix is
recomputed per pass (two passes, three with DSL), so every pass sees bit-identical scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from discovla.batching import batches

SimFn = Callable[[slice], torch.Tensor]
"""``sim_fn(rows)`` returns ``S[rows, :]``, the similarities of a slice of captions to all videos."""

KS = (1, 5, 10, 50)


def rank_summary(ranks: torch.Tensor | np.ndarray, ks: Sequence[int] = KS) -> dict[str, float | int]:
    """R@K (percent), MdR, MnR and the number of queries of 1-based ranks."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        raise ValueError("no queries: cannot compute retrieval metrics")
    out: dict[str, float | int] = {f"R@{k}": float(100.0 * np.mean(r <= k)) for k in ks}
    out["MdR"] = float(np.median(r))
    out["MnR"] = float(np.mean(r))
    out["queries"] = int(r.size)
    return out


def _embedding_sim_fn(text_emb: torch.Tensor, video_emb: torch.Tensor) -> SimFn:
    t = torch.as_tensor(text_emb).float()
    v = torch.as_tensor(video_emb).float()
    if t.ndim != 2 or v.ndim != 2 or t.shape[1] != v.shape[1]:
        raise ValueError(f"embeddings must be [N, D] and [M, D], got {tuple(t.shape)} and {tuple(v.shape)}")
    vt = v.T.contiguous()
    return lambda rows: t[rows] @ vt


class _Matrix:
    """Chunked access to ``S`` (and its DSL variants) with shape checks."""

    def __init__(self, sim_fn: SimFn, num_texts: int, chunk_size: int, temperature: float) -> None:
        self.sim_fn, self.num_texts = sim_fn, num_texts
        self.chunk_size, self.temperature = chunk_size, temperature
        self.num_videos: int | None = None
        self.col_lse: torch.Tensor | None = None

    def rows(self) -> Iterator[tuple[slice, torch.Tensor]]:
        for rows in batches(self.num_texts, self.chunk_size):
            s = torch.as_tensor(self.sim_fn(rows)).double()
            if s.ndim != 2 or s.shape[0] != rows.stop - rows.start:
                raise ValueError(
                    f"sim_fn({rows}) returned shape {tuple(s.shape)}, expected [{rows.stop - rows.start}, V]"
                )
            if self.num_videos is None:
                self.num_videos = s.shape[1]
            elif s.shape[1] != self.num_videos:
                raise ValueError(
                    f"sim_fn returned {s.shape[1]} columns, earlier chunks had {self.num_videos}"
                )
            if torch.isnan(s).any():
                raise ValueError("similarity matrix contains NaN")
            yield rows, s

    def compute_col_lse(self) -> None:
        lse = None
        for _, s in self.rows():
            part = torch.logsumexp(self.temperature * s, dim=0)
            lse = part if lse is None else torch.logaddexp(lse, part)
        self.col_lse = lse

    def dsl_t2v(self, s: torch.Tensor) -> torch.Tensor:
        assert self.col_lse is not None
        return s * torch.exp(self.temperature * s - self.col_lse[None, :])

    def dsl_v2t(self, s: torch.Tensor) -> torch.Tensor:
        return s * torch.softmax(self.temperature * s, dim=1)


def _t2v_ranks(vals: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pessimistic ranks of each row's target column, and the target scores."""
    correct = vals.gather(1, target[:, None])
    ge = vals >= correct
    ge[torch.arange(len(target)), target] = False
    return 1 + ge.sum(1), correct[:, 0]


def _count_v2t(vals: torch.Tensor, target: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Per video: how many captions of this chunk belonging to other videos score >= its best own caption."""
    ge = vals >= best[None, :]
    ge[torch.arange(len(target)), target] = False
    return ge.sum(0)


def retrieval_metrics(
    sim: SimFn | torch.Tensor | np.ndarray,
    video_emb: torch.Tensor | np.ndarray | None,
    caption_video_index: Sequence[int] | torch.Tensor | np.ndarray,
    chunk_size: int = 1024,
    *,
    dsl_temperature: float | None = None,
    ks: Sequence[int] = KS,
    return_ranks: bool = False,
) -> dict[str, Any]:
    """t2v and v2t R@K, MdR, MnR (protocol and tie rule in the module docstring).

    ``sim`` is either a function ``sim_fn(rows: slice) -> S[rows, :]`` (then ``video_emb`` is ``None``)
    or caption embeddings ``[N, D]`` scored against ``video_emb [M, D]`` by dot product (pass normalised
    embeddings for cosine). ``caption_video_index[i]`` is the video of caption ``i``. ``chunk_size`` caption
    rows are scored at a time. With ``dsl_temperature`` (the model's logit scale, e.g. 100 for OpenAI
    CLIP) the result also has ``"t2v_dsl"`` and ``"v2t_dsl"`` blocks. Returns ``{"t2v": {"R@1": ..,
    "R@5": .., "R@10": .., "R@50": .., "MdR": .., "MnR": .., "queries": N}, "v2t": {...}}``; with
    ``return_ranks`` also ``"ranks": {"t2v": int64 array, "v2t": ..., ...}`` (per query, for curves).
    """
    target = torch.as_tensor(np.asarray(caption_video_index), dtype=torch.long)
    if target.ndim != 1 or len(target) == 0:
        raise ValueError("caption_video_index must be a non-empty 1-D sequence of video indices")
    if callable(sim):
        if video_emb is not None:
            raise ValueError("pass either sim_fn or (text_emb, video_emb), not both")
        sim_fn = sim
    else:
        if video_emb is None:
            raise ValueError("video_emb is required with text embeddings")
        sim_fn = _embedding_sim_fn(torch.as_tensor(sim), torch.as_tensor(video_emb))
        if len(sim) != len(target):
            raise ValueError(f"{len(sim)} caption embeddings but {len(target)} caption_video_index entries")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    m = _Matrix(sim_fn, len(target), chunk_size, float(dsl_temperature or 0.0))
    variants: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]]
    variants = {"": (lambda s: s, lambda s: s)}
    if dsl_temperature is not None:
        if not dsl_temperature > 0:
            raise ValueError(f"dsl_temperature must be > 0, got {dsl_temperature}")
        m.compute_col_lse()
        variants["_dsl"] = (m.dsl_t2v, m.dsl_v2t)

    # Pass 1: t2v ranks, and each video's best own-caption score (for v2t).
    t2v_ranks: dict[str, list[torch.Tensor]] = {k: [] for k in variants}
    best: dict[str, torch.Tensor] = {}
    for rows, s in m.rows():
        tgt = target[rows]
        if int(tgt.min()) < 0 or int(tgt.max()) >= s.shape[1]:
            raise ValueError(f"caption_video_index has values outside 0..{s.shape[1] - 1}")
        for key, (t2v_fn, v2t_fn) in variants.items():
            ranks, _ = _t2v_ranks(t2v_fn(s), tgt)
            t2v_ranks[key].append(ranks)
            own = v2t_fn(s).gather(1, tgt[:, None])[:, 0]
            if key not in best:
                best[key] = torch.full((s.shape[1],), -torch.inf, dtype=torch.float64)
            best[key].scatter_reduce_(0, tgt, own, reduce="amax")

    # Pass 2: v2t counts against the now-known best own-caption scores.
    assert m.num_videos is not None
    counts = {k: torch.zeros(m.num_videos, dtype=torch.long) for k in variants}
    for rows, s in m.rows():
        for key, (_, v2t_fn) in variants.items():
            counts[key] += _count_v2t(v2t_fn(s), target[rows], best[key])

    has_caption = torch.zeros(m.num_videos, dtype=torch.bool)
    has_caption[target] = True
    out: dict[str, Any] = {}
    ranks: dict[str, np.ndarray] = {}
    for key in variants:
        ranks[f"t2v{key}"] = torch.cat(t2v_ranks[key]).numpy()
        ranks[f"v2t{key}"] = (1 + counts[key][has_caption]).numpy()
    for name, r in ranks.items():
        out[name] = rank_summary(r, ks)
    if return_ranks:
        out["ranks"] = ranks
    return out


def recall_at(ranks: np.ndarray | torch.Tensor | Sequence[int], k: int) -> float:
    """R@k in percent of 1-based ranks (e.g. ``out["ranks"]["t2v"]``)."""
    r = np.asarray(ranks)
    if r.size == 0:
        raise ValueError("no ranks")
    return float(100.0 * np.mean(r <= k))


def twin_accuracy(
    text_emb: torch.Tensor | np.ndarray,
    video_emb: torch.Tensor | np.ndarray,
    pairs: Sequence[tuple[int, int, int]] | torch.Tensor | np.ndarray,
    video_a: Sequence[int] | torch.Tensor | np.ndarray | None = None,
    video_b: Sequence[int] | torch.Tensor | np.ndarray | None = None,
) -> float:
    """Twin accuracy in percent: over twin pairs ``(caption of a, video a, twin b)``, how often the caption
    scores its own video higher, ``s(c, a) > s(c, b)`` (dot products, in float64).

    An exact tie counts as one half (the expected score of a coin-flip tie-break), so a model that cannot
    tell twins apart, bit-identical embeddings included, scores 50%: chance, neither inflated nor deflated.
    ``pairs`` is ``[P, 3]`` rows ``(caption_index, video_a, video_b)``, or the caption indices with
    ``video_a`` and ``video_b`` given separately.
    """
    if video_a is not None or video_b is not None:
        if video_a is None or video_b is None:
            raise ValueError("give both video_a and video_b, or pairs as [P, 3]")
        cols = [np.asarray(x).reshape(-1) for x in (pairs, video_a, video_b)]
        if len({len(c) for c in cols}) != 1:
            raise ValueError("caption, video_a and video_b index arrays differ in length")
        p = torch.as_tensor(np.stack(cols, axis=1), dtype=torch.long)
    else:
        p = torch.as_tensor(np.asarray(pairs), dtype=torch.long)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) == 0:
        raise ValueError("pairs must be a non-empty [P, 3] array of (caption_index, video_a, video_b)")
    t = torch.as_tensor(text_emb).double()
    v = torch.as_tensor(video_emb).double()
    c = t[p[:, 0]]
    own = (c * v[p[:, 1]]).sum(1)
    twin = (c * v[p[:, 2]]).sum(1)
    return float(100.0 * ((own > twin).double() + 0.5 * (own == twin).double()).mean())


def reversal_accuracy(
    text_emb: torch.Tensor | np.ndarray,
    video_emb: torch.Tensor | np.ndarray,
    reversed_emb: torch.Tensor | np.ndarray,
    target: Sequence[int] | np.ndarray,
    tie_tol: float = 1e-5,
) -> float:
    """Reversal-test accuracy in percent: how often caption c scores its own video ``target[c]`` above the
    same video with its frames reversed (``reversed_emb[target[c]]``), dot products in float64.

    A difference within ``tie_tol`` is a tie and counts one half: an order-blind model encodes a video and
    its reversal alike up to float32 summation order (about 1e-7), and must score chance, 50%, not a coin
    flip decided by rounding. Give normalised embeddings (cosines); ``tie_tol`` is in cosine units.
    """
    t = torch.as_tensor(text_emb).double()
    v = torch.as_tensor(video_emb).double()
    r = torch.as_tensor(reversed_emb).double()
    idx = torch.as_tensor(np.asarray(target), dtype=torch.long).reshape(-1)
    if v.shape != r.shape:
        raise ValueError(f"video_emb {tuple(v.shape)} and reversed_emb {tuple(r.shape)} differ in shape")
    if len(idx) != len(t) or len(t) == 0:
        raise ValueError(f"{len(idx)} targets for {len(t)} captions (need one per caption, at least one)")
    diff = (t * v[idx]).sum(1) - (t * r[idx]).sum(1)
    wins = (diff > tie_tol).double() + 0.5 * (diff.abs() <= tie_tol).double()
    return float(100.0 * wins.mean())
