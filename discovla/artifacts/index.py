"""Video index: the embeddings of a set of videos under one model, and chunked top-k search over them.

On disk, one atomic directory:

- ``index.parquet``: one row per video, in a fixed order: ``video_id`` (string), ``path`` (string, may be
  empty), ``embedding`` (``fixed_size_list<float32>[D]``, L2-normalised), and ``size`` / ``mtime_ns``
  (int64, the file's size and modification time when it was embedded, -1 when not from a file): what an
  incremental re-run matches a file by.
- ``index.json``: which model computed the embeddings (``model``: the adapters directory's content digest
  and the zero-shot flag, plus what the model needs to sample a video: frames, image size) and where the
  videos came from (``source``). :func:`check_model` refuses an index made by another model.
- ``skipped.csv`` (folder indexes): ``path, size, mtime_ns, reason`` of every video that could not be sampled.
- ``ann.faiss`` + ``ann.json`` (``discovla index --ann``): an approximate FAISS index over the same rows
  (:mod:`discovla.ann`), used by :func:`search_index` unless ``exact=True``.

Search (:func:`topk`) scores the rows in chunks (``query @ embedding[chunk].T``), so only ``Q x chunk``
scores exist at a time, and keeps a running top k per query. Ties are broken by row order, explicitly:
of two equal scores the earlier row ranks first, whatever the chunk size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from discovla.errors import DiscoVLAError
from discovla.io import atomic_dir, read_json, write_json

FORMAT = 1
TABLE = "index.parquet"
META = "index.json"
SKIPPED = "skipped.csv"
CHUNK_ROWS = 65536
SKIPPED_COLUMNS = ["path", "size", "mtime_ns", "reason"]


class VideoIndexError(DiscoVLAError, ValueError):
    """An index that is missing, malformed, or was computed with another model (message says what to do)."""


@dataclass
class VideoIndex:
    """Embeddings of videos under one model: ``embeddings [N, D]`` float32, rows in ``video_ids`` order."""

    video_ids: list[str]
    paths: list[str]
    embeddings: torch.Tensor
    meta: dict[str, Any]
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    mtimes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SKIPPED_COLUMNS))
    ann: Any = None  # discovla.ann.AnnIndex over these rows, or None (exact search only)

    def __post_init__(self) -> None:
        n = len(self.video_ids)
        if self.embeddings.ndim != 2 or len(self.embeddings) != n or len(self.paths) != n:
            raise ValueError(
                f"index: {n} video ids, {len(self.paths)} paths and embeddings of shape "
                f"{tuple(self.embeddings.shape)} (want [{n}, D])"
            )
        if len(self.sizes) == 0:
            self.sizes = np.full(n, -1, np.int64)
        if len(self.mtimes) == 0:
            self.mtimes = np.full(n, -1, np.int64)
        if len(self.sizes) != n or len(self.mtimes) != n:
            raise ValueError(f"index: sizes and mtimes must have {n} entries")
        if self.ann is not None and self.ann.rows != n:
            raise ValueError(f"index: the approximate index holds {self.ann.rows} rows, the index {n}")

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def write_index(out_dir: str | Path, index: VideoIndex) -> None:
    """Write ``index`` as one atomic directory (``index.parquet`` + ``index.json`` [+ ``skipped.csv``])."""
    emb = np.ascontiguousarray(index.embeddings.detach().cpu().float().numpy())
    if len(set(index.video_ids)) != len(index.video_ids):
        dup = pd.Series(index.video_ids)[pd.Series(index.video_ids).duplicated()].iloc[0]
        raise ValueError(f"index: video id {dup!r} appears more than once")
    width = emb.shape[1]
    table = pa.table(
        {
            "video_id": pa.array(index.video_ids, pa.string()),
            "path": pa.array(index.paths, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), width),
            "size": pa.array(np.asarray(index.sizes, np.int64), pa.int64()),
            "mtime_ns": pa.array(np.asarray(index.mtimes, np.int64), pa.int64()),
        }
    )
    meta = {**index.meta, "format": FORMAT, "videos": len(index), "embed_dim": width}
    with atomic_dir(out_dir) as tmp:
        pq.write_table(table, tmp / TABLE, compression="zstd")
        write_json(tmp / META, meta)
        if len(index.skipped):
            index.skipped[SKIPPED_COLUMNS].to_csv(tmp / SKIPPED, index=False)
        if index.ann is not None:
            index.ann.write(tmp)


def read_index(path: str | Path, ann: bool = True) -> VideoIndex:
    """Read an index written by :func:`write_index` (with its approximate index, if any, unless ``ann`` is
    false)."""
    path = Path(path)
    if not (path / META).is_file() or not (path / TABLE).is_file():
        raise VideoIndexError(
            f"{path} is not a video index (no {META} / {TABLE}): build one with "
            f"`discovla index PATH/TO/VIDEOS --out {path}`"
        )
    meta = read_json(path / META)
    if meta.get("format") != FORMAT:
        raise VideoIndexError(
            f"{path}: index format {meta.get('format')!r}, this code reads {FORMAT}: rebuild it"
        )
    table = pq.read_table(path / TABLE)
    col = table.column("embedding").combine_chunks()
    width = col.type.list_size
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    emb = torch.from_numpy(flat.reshape(len(table), width).copy())  # writable, contiguous
    skipped_csv = path / SKIPPED
    skipped = (
        pd.read_csv(skipped_csv, dtype={"path": str, "reason": str}, keep_default_na=False)
        if skipped_csv.is_file()
        else pd.DataFrame(columns=SKIPPED_COLUMNS)
    )
    approx = None
    if ann:
        from discovla.ann import has_ann, read_ann

        if has_ann(path):
            approx = read_ann(path, len(table), meta.get("model") or {})
    return VideoIndex(
        video_ids=[str(v) for v in table.column("video_id").to_pylist()],
        paths=[str(p or "") for p in table.column("path").to_pylist()],
        embeddings=emb,
        meta=meta,
        sizes=table.column("size").to_numpy().astype(np.int64),
        mtimes=table.column("mtime_ns").to_numpy().astype(np.int64),
        skipped=skipped,
        ann=approx,
    )


def describe_model(model: dict[str, Any]) -> str:
    """``zero-shot CLIP (base weights sha256 abcdef123456)`` or
    ``DiscoVLA <dir> (adapters sha256 abcdef123456, base weights sha256 ...)``."""
    base = str(model.get("base_weights_sha256") or "unrecorded")[:12]
    if model.get("zeroshot"):
        return f"zero-shot CLIP (base weights sha256 {base})"
    digest = str(model.get("adapters_digest", ""))[:12]
    return f"DiscoVLA {model.get('adapters', '?')} (adapters sha256 {digest}, base weights sha256 {base})"


def same_model(meta: dict[str, Any], model: dict[str, Any]) -> bool:
    """Whether an index's ``meta`` was computed by ``model``: the zero-shot flag, the frozen CLIP's
    weights digest and, unless zero-shot (where the adapters play no part), the adapters digest. An index
    that does not record its base weights (made before they were recorded) is not taken as the same."""
    have = meta.get("model") or {}
    keys = ("zeroshot", "base_weights_sha256") + (() if model.get("zeroshot") else ("adapters_digest",))
    return bool(have.get("base_weights_sha256")) and all(have.get(k) == model.get(k) for k in keys)


def check_model(index: VideoIndex, model: dict[str, Any], where: str | Path = "index") -> None:
    """:class:`VideoIndexError` unless ``index`` was computed by ``model`` (see :func:`same_model`)."""
    if same_model(index.meta, model):
        return
    have = index.meta.get("model") or {}
    raise VideoIndexError(
        f"{where} was computed with another model: {describe_model(have)}, not "
        f"{describe_model(model)}; its scores would be meaningless: rebuild it "
        f"(`discovla index PATH/TO/VIDEOS --out {where}`{' --zeroshot' if model.get('zeroshot') else ''}) "
        f"or search with the model that made it (--adapters / --zeroshot)"
    )


def topk(
    queries: torch.Tensor, embeddings: torch.Tensor, k: int, chunk_size: int = CHUNK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best rows of ``embeddings [N, D]`` for each of ``queries [Q, D]`` by dot product.

    Returns ``(scores [Q, k'], rows [Q, k'])`` with ``k' = min(k, N)``, best first; of equal scores the
    lower row comes first (explicit, independent of ``chunk_size``). Scores are computed ``chunk_size``
    rows at a time (memory O(Q x chunk_size)); a NaN score ranks last.
    """
    q = torch.as_tensor(queries).float()
    if q.ndim == 1:
        q = q[None]
    e = torch.as_tensor(embeddings)
    if q.ndim != 2 or e.ndim != 2 or q.shape[1] != e.shape[1]:
        raise ValueError(
            f"topk: queries [Q, D] and embeddings [N, D], got {tuple(q.shape)}, {tuple(e.shape)}"
        )
    if k < 1 or chunk_size < 1:
        raise ValueError(f"topk: k and chunk_size must be >= 1, got {k} and {chunk_size}")
    n, kk = e.shape[0], min(k, e.shape[0])
    best_s = torch.empty(q.shape[0], 0)
    best_i = torch.empty(q.shape[0], 0, dtype=torch.long)
    qt = q.T.contiguous()
    for start in range(0, n, chunk_size):
        chunk = e[start : start + chunk_size].to(q.device, torch.float32)
        s = torch.nan_to_num((chunk @ qt).T, nan=-torch.inf).cpu()  # [Q, c]
        rows = torch.arange(start, start + s.shape[1])
        # keep every score >= the chunk's k-th best, ties at the boundary included, then merge in order
        thresh = s.topk(min(kk, s.shape[1]), dim=1).values[:, -1:]
        new_s, new_i = [], []
        for r in range(s.shape[0]):
            keep = s[r] >= thresh[r]
            cand_s = torch.cat([best_s[r], s[r][keep]])
            cand_i = torch.cat([best_i[r], rows[keep]])
            s_out, i_out = _first_k(cand_s, cand_i, kk)
            new_s.append(s_out)
            new_i.append(i_out)
        best_s, best_i = torch.stack(new_s), torch.stack(new_i)
    return best_s, best_i


def _first_k(scores: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` first of (score descending, row ascending)."""
    by_row = torch.argsort(rows, stable=True)
    scores, rows = scores[by_row], rows[by_row]
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    return scores[order], rows[order]


def search_index(
    index: VideoIndex,
    queries: torch.Tensor,
    k: int,
    chunk_size: int = CHUNK_ROWS,
    *,
    exact: bool = False,
    nprobe: int | None = None,
) -> list[list[tuple[int, str, float, str]]]:
    """Per query, ``[(rank, video_id, score, path), ...]`` of its ``k`` best videos: exact (see
    :func:`topk`), or from the index's approximate index when it has one and ``exact`` is false
    (``nprobe``: IVF cells scanned, default the index's own)."""
    if index.ann is not None and not exact and len(index):
        if k < 1:
            raise ValueError(f"search: k must be >= 1, got {k}")
        s_arr, r_arr = index.ann.search(queries, k, index.embeddings, nprobe=nprobe)
        scores, rows = s_arr.tolist(), r_arr.tolist()
    else:
        s_t, r_t = topk(queries, index.embeddings, k, chunk_size)
        scores, rows = s_t.tolist(), r_t.tolist()
    return [
        [
            (r + 1, index.video_ids[i], float(s), index.paths[i])
            for r, (s, i) in enumerate(zip(ss, ii, strict=True))
            if i >= 0
        ]
        for ss, ii in zip(scores, rows, strict=True)
    ]


def skipped_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """A ``skipped.csv`` table from dicts with keys path, size, mtime_ns, reason."""
    return pd.DataFrame(list(rows), columns=SKIPPED_COLUMNS)
