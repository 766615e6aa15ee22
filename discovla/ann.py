"""Approximate nearest-neighbour search over a video index with FAISS (``discovla index --ann KIND``).

Exact search (:func:`discovla.artifacts.index.topk`) scores every video: about 15 ms per 100k videos at width
512 on one core, over a second at 10M. An approximate index answers from a fraction of them:

- ``ivf``: ``IndexIVFFlat`` (inner product): k-means cells (``nlist``, trained on a sample of at most
  ``train_per_list x nlist`` vectors), a query scans the ``nprobe`` nearest cells; scores are exact.
- ``ivfpq``: ``IndexIVFPQ``: the same cells, vectors stored as ``m`` bytes of product-quantisation codes
  (``m`` sub-vectors of 8 bits: 64 bytes instead of 2 KB at width 512); ``refine x k`` candidates are
  re-ranked with the index's exact embeddings, so returned scores are exact.
- ``hnsw``: ``IndexHNSWFlat`` (graph, ``M`` links per node, ``efSearch`` at query time): no training, the
  slowest build and the largest memory, the best recall per millisecond at small k.

On disk, inside the index directory (written in the same atomic directory as ``index.parquet``):
``ann.faiss`` (FAISS's own binary format, :func:`faiss.write_index`, no pickle) and ``ann.json``: the
kind, the build and search parameters, the number of rows and the model digest of the index it was built
from; :func:`read_ann` refuses a sidecar whose model or row count is not the index's. Rows of the FAISS
index are the rows of ``index.parquet``.

An incremental ``discovla index`` run keeps a trained IVF quantizer (and PQ codebooks) of the previous
index built with the same parameters and re-adds every vector (adding is cheap; training is not); HNSW is
rebuilt.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from discovla.errors import DiscoVLAError
from discovla.io import read_json, write_json

ANN_FILE = "ann.faiss"
ANN_META = "ann.json"
KINDS = ("ivf", "ivfpq", "hnsw")
FORMAT = 1


class AnnError(DiscoVLAError, ValueError):
    """An approximate index that cannot be built or does not belong to its video index."""


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency
        raise AnnError("approximate search needs faiss-cpu: pip install faiss-cpu") from exc
    return faiss


def default_nlist(n: int) -> int:
    """IVF cells for ``n`` vectors: the power of two nearest ``sqrt(n)``, within [1, n // 39] (FAISS wants
    about 39 training points per cell)."""
    if n < 2:
        return 1
    p = 2 ** round(math.log2(math.sqrt(n)))
    return int(max(1, min(p, n // 39)))


@dataclass
class AnnParams:
    """How an approximate index is built and searched (``None``: chosen from the number of videos)."""

    kind: str = "ivf"
    nlist: int | None = None  # ivf, ivfpq: cells
    nprobe: int | None = None  # ivf, ivfpq: cells scanned per query (search time, may be overridden)
    train_per_list: int = 64  # ivf, ivfpq: training sample = train_per_list x nlist vectors at most
    m: int | None = None  # ivfpq: bytes per vector (sub-quantisers); must divide the width
    refine: int = 4  # ivfpq: candidates re-ranked exactly = refine x k
    hnsw_m: int = 32  # hnsw: links per node
    ef_construction: int = 80  # hnsw: build-time beam
    ef_search: int = 64  # hnsw: query-time beam (at least k)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise AnnError(f"unknown approximate index {self.kind!r}: choose one of {', '.join(KINDS)}")

    def resolved(self, n: int, dim: int) -> AnnParams:
        """These parameters with every ``None`` chosen for ``n`` vectors of width ``dim``."""
        nlist = self.nlist or default_nlist(n)
        nprobe = self.nprobe or max(1, min(nlist, max(8, nlist // 32)))
        m = self.m or next(c for c in (dim // 8, dim // 4, dim // 2, dim, 1) if c >= 1 and dim % c == 0)
        if self.kind == "ivfpq" and dim % m:
            raise AnnError(f"ivfpq: m={m} must divide the embedding width {dim}")
        if self.kind != "hnsw" and nlist > n:
            raise AnnError(f"{self.kind}: nlist={nlist} cells for only {n} videos: pass a smaller --nlist")
        return AnnParams(**{**asdict(self), "nlist": nlist, "nprobe": nprobe, "m": m})


def _as_matrix(x: Any) -> np.ndarray:
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return np.ascontiguousarray(arr, dtype=np.float32)


class AnnIndex:
    """A FAISS index over the rows of a video index, with the parameters it was built with."""

    def __init__(
        self, index: Any, params: AnnParams, meta: dict[str, Any], requested: AnnParams | None = None
    ) -> None:
        self.index = index
        self.params = params  # resolved: what it was built with
        # as asked for (None: chosen from the number of videos), what a rebuild of a grown index resolves
        self.requested = requested or params
        self.meta = meta  # kind, params, requested, rows, dim, model (the index's model identity), build_s

    @property
    def rows(self) -> int:
        return int(self.index.ntotal)

    def search(
        self, queries: Any, k: int, embeddings: Any | None = None, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [Q, k'], rows [Q, k'])`` best first, ``k' = min(k, rows)``; ``embeddings`` (the video
        index's, ``[N, D]``) re-rank ``ivfpq`` candidates exactly. ``nprobe`` overrides the stored one."""
        faiss = _faiss()
        q = _as_matrix(queries)
        if q.ndim == 1:
            q = q[None]
        kk = min(int(k), self.rows)
        if kk < 1:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        p = self.params
        if p.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(p.ef_search, kk))
            scores, rows = self.index.search(q, kk, params=params)
        else:
            params = faiss.SearchParametersIVF(nprobe=int(nprobe or p.nprobe))
            fetch = kk * max(1, p.refine) if p.kind == "ivfpq" else kk
            scores, rows = self.index.search(q, min(fetch, self.rows), params=params)
            if p.kind == "ivfpq" and embeddings is not None:
                scores, rows = _rerank(q, rows, _as_matrix(embeddings), kk)
            else:
                scores, rows = scores[:, :kk], rows[:, :kk]
        return scores, rows

    def write(self, directory: str | Path) -> None:
        """``ann.faiss`` + ``ann.json`` into ``directory`` (the video index's atomic temporary directory)."""
        faiss = _faiss()
        directory = Path(directory)
        faiss.write_index(self.index, str(directory / ANN_FILE))
        write_json(directory / ANN_META, {**self.meta, "format": FORMAT, "rows": self.rows})


def _rerank(q: np.ndarray, rows: np.ndarray, emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each query's candidate ``rows`` (-1: none) by exact dot product, ties by row."""
    out_s = np.full((len(q), k), -np.inf, np.float32)
    out_r = np.full((len(q), k), -1, np.int64)
    for i, cand in enumerate(rows):
        cand = np.unique(cand[cand >= 0])  # sorted: equal scores keep row order below
        s = emb[cand] @ q[i]
        order = np.argsort(-s, kind="stable")[:k]
        out_s[i, : len(order)], out_r[i, : len(order)] = s[order], cand[order]
    return out_s, out_r


def build_ann(
    embeddings: Any,
    params: AnnParams,
    model: dict[str, Any] | None = None,
    previous: AnnIndex | None = None,
) -> AnnIndex:
    """A FAISS index of ``embeddings [N, D]`` (L2-normalised: inner product = cosine). ``previous``: an
    index built with the same parameters and width whose trained cells (and codebooks) are reused."""
    import time

    faiss = _faiss()
    x = _as_matrix(embeddings)
    if x.ndim != 2 or len(x) == 0:
        raise AnnError(f"an approximate index needs at least one embedding, got shape {x.shape}")
    n, dim = x.shape
    p = params.resolved(n, dim)
    t0 = time.perf_counter()
    reused = False
    if p.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p.ef_construction
        index.add(x)
    else:
        if previous is not None and _same_build(previous, p, dim):
            index = faiss.clone_index(previous.index)
            index.reset()  # keeps the trained quantizer (and PQ codebooks), drops the vectors
            reused = True
        else:
            quantizer = faiss.IndexFlatIP(dim)
            if p.kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, dim, p.nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss.IndexIVFPQ(quantizer, dim, p.nlist, p.m, 8, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = p.seed
            sample = min(n, p.train_per_list * p.nlist)
            rng = np.random.default_rng(p.seed)
            train = x if sample == n else x[np.sort(rng.choice(n, sample, replace=False))]
            index.train(train)
        index.add(x)
    meta = {
        "kind": p.kind,
        "params": asdict(p),
        "requested": asdict(params),
        "dim": dim,
        "model": dict(model or {}),
        "build_s": round(time.perf_counter() - t0, 3),
        "reused_training": reused,
    }
    return AnnIndex(index, p, meta, requested=params)


def _same_build(previous: AnnIndex, p: AnnParams, dim: int) -> bool:
    keys = ("kind", "nlist", "m", "train_per_list", "seed")
    return int(previous.meta.get("dim", -1)) == dim and all(
        getattr(previous.params, k) == getattr(p, k) for k in keys
    )


def has_ann(directory: str | Path) -> bool:
    return (Path(directory) / ANN_META).is_file()


def read_ann(directory: str | Path, rows: int, model: dict[str, Any]) -> AnnIndex:
    """The approximate index stored in ``directory``, checked to cover ``rows`` rows of an index made by
    ``model`` (the index's ``model`` meta: adapters digest and zero-shot flag)."""
    faiss = _faiss()
    directory = Path(directory)
    meta = read_json(directory / ANN_META)
    if meta.get("format") != FORMAT or not (directory / ANN_FILE).is_file():
        raise AnnError(
            f"{directory}: {ANN_META} without a readable {ANN_FILE}: rebuild with discovla index --ann"
        )
    have = meta.get("model") or {}
    if any(have.get(k) != model.get(k) for k in ("adapters_digest", "zeroshot")):
        raise AnnError(
            f"{directory}/{ANN_FILE} was built from another model's embeddings than its index.parquet: "
            f"rebuild it (discovla index ... --ann {meta.get('kind', 'ivf')})"
        )
    index = faiss.read_index(str(directory / ANN_FILE))
    if int(index.ntotal) != rows or int(meta.get("rows", -1)) != rows:
        raise AnnError(
            f"{directory}/{ANN_FILE} holds {index.ntotal} videos, index.parquet {rows}: rebuild it "
            f"(discovla index ... --ann {meta.get('kind', 'ivf')})"
        )
    requested = AnnParams(**meta["requested"]) if "requested" in meta else None  # older files: as built
    return AnnIndex(index, AnnParams(**meta["params"]), meta, requested=requested)
