"""Benchmark: milliseconds per text query of ``Retriever.search``, exact and approximate.

    python benchmarks/search_latency.py exact --adapters models/discovla --features data/features
    python benchmarks/search_latency.py ann --sizes 100000 --sizes 1000000      # FAISS against exact search

``exact`` (text encoding + chunked scores + top-k):
Two indexes: the test split of the feature cache (embedded in memory with the trained adapters, nothing is
written) and a synthetic index of ``--videos`` random L2-normalised embeddings at the model's width; plus
the synthetic index at ViT-B/16's width (512, search only: a random query). Reports the median and 95th
percentile over ``--queries`` queries after ``--warmup`` untimed ones, the two parts separately, the time
to read the synthetic index back from Parquet, and the largest allocation a search makes (torch profiler):
O(chunk), ``Q x chunk`` float32 scores, never a score per video.

``ann``: the approximate indexes of :mod:`discovla.ann` on synthetic unit vectors of width 512, see
:func:`ann`.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import typer

from discovla.artifacts.features import load_features
from discovla.artifacts.index import CHUNK_ROWS, VideoIndex, read_index, topk, write_index
from discovla.retriever import Retriever
from discovla.split_indexing import split_index

QUERIES = [
    "a red circle slides to the left",
    "a small blue square moves up",
    "a large green triangle in the middle turns yellow",
    "two objects: a white star and a purple circle drifting apart",
    "a tiny orange square near the bottom edge stays still",
]


def _ms(fn: Callable[[], object], n: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    times.sort()
    return {"median_ms": round(statistics.median(times), 3), "p95_ms": round(times[int(0.95 * (n - 1))], 3)}


def _largest_allocation_mb(fn: Callable[[], object]) -> float:
    """The largest CPU tensor allocation made by one call of ``fn`` (torch profiler, memory profiling on)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((e.self_cpu_memory_usage for e in prof.events()), default=0) / 2**20


def _synthetic(n: int, dim: int) -> VideoIndex:
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    ids = [f"video{i:06d}" for i in range(n)]
    return VideoIndex(ids, [""] * n, emb, {"model": {}})


def bench_index(
    r: Retriever, index: VideoIndex, k: int, chunk: int, n: int, warmup: int, text: bool = True
) -> dict[str, object]:
    """Per-query latency on ``index``: end to end (text given) or scores + top-k only (random query)."""
    out: dict[str, object] = {"videos": len(index), "dim": index.dim, "k": k, "chunk_rows": chunk}
    queries = iter(range(10**9))
    if text:
        vectors = r.encode_texts(QUERIES)

        def full() -> None:
            q = QUERIES[next(queries) % len(QUERIES)]
            topk(r.encode_texts([q]), index.embeddings, k, chunk)

        out["end_to_end"] = _ms(full, n, warmup)
        out["text_encoding"] = _ms(lambda: r.encode_texts([QUERIES[next(queries) % len(QUERIES)]]), n, warmup)
    else:
        vectors = torch.nn.functional.normalize(torch.randn(len(QUERIES), index.dim), dim=-1)
    out["scores_and_topk"] = _ms(
        lambda: topk(vectors[next(queries) % len(vectors)][None], index.embeddings, k, chunk), n, warmup
    )
    search = lambda: topk(vectors[:1], index.embeddings, k, chunk)  # noqa: E731
    out["largest_allocation_mb"] = round(_largest_allocation_mb(search), 3)
    out["score_chunk_mb"] = round(min(chunk, len(index)) * 4 / 2**20, 3)  # one query's chunk of scores
    out["index_mb"] = round(index.embeddings.numel() * 4 / 2**20, 1)
    return out


app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


@app.command()
def exact(
    adapters: str = typer.Option("models/discovla", help="Trained adapters (train stage)."),
    features: str = typer.Option("data/features", help="Feature cache (its test split is indexed)."),
    videos: int = typer.Option(100_000, help="Videos in the synthetic index."),
    k: int = typer.Option(5, help="Results per query."),
    chunk: int = typer.Option(CHUNK_ROWS, help="Rows scored at a time."),
    queries: int = typer.Option(50, help="Timed queries per measurement."),
    warmup: int = typer.Option(5, help="Untimed queries first."),
    threads: int = typer.Option(1, help="torch CPU threads (1: one core per query, steady under load)."),
    out: str = typer.Option("benchmarks/results/search_latency.json", help="Results JSON."),
) -> None:
    torch.set_num_threads(threads)
    r = Retriever.load(adapters, device="cpu")
    result: dict[str, object] = {
        "adapters": adapters,
        "backbone": r.backbone.name,
        "device": f"cpu x{torch.get_num_threads()} threads",
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    t0 = time.perf_counter()
    test = split_index(r, load_features(features), "test")
    result["test_split_index_build_s"] = round(time.perf_counter() - t0, 2)
    result["test_split"] = bench_index(r, test, k, chunk, queries, warmup)

    synthetic = _synthetic(videos, r.embed_dim)
    result["synthetic"] = bench_index(r, synthetic, k, chunk, queries, warmup)
    with tempfile.TemporaryDirectory() as tmp:
        write_index(Path(tmp) / "idx", synthetic)
        t0 = time.perf_counter()
        read_index(Path(tmp) / "idx")
        result["synthetic"]["read_index_ms"] = round(1000 * (time.perf_counter() - t0), 1)
    del synthetic
    result["synthetic_vit_b16_width"] = bench_index(
        r, _synthetic(videos, 512), k, chunk, queries, warmup, False
    )

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


# ---------------------------------------------------------------------------------------- approximate


def _rss_mb() -> float:
    """This process's resident memory now (Linux /proc)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def clustered(n: int, dim: int, seed: int, clusters: int | None = None, spread: float = 1.2) -> np.ndarray:
    """``n`` unit vectors of width ``dim`` scattered around ``clusters`` random directions (default n/1000):
    each is ``normalise(centre + noise)`` with noise of norm ``spread`` (cosine to its centre ~0.7). Made
    in chunks of 100k, float32 (1M x 512 = 2 GB); cosine to its centre ~0.64."""
    rng = np.random.default_rng(seed)
    clusters = clusters or max(1, n // 1000)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = centres[rng.integers(clusters, size=m)]
        x += rng.standard_normal((m, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def uniform(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` unit vectors uniform on the sphere: no structure at all, the worst case of any ANN index."""
    return clustered(n, dim, seed, clusters=n, spread=1e6)


def _queries(data: np.ndarray, q: int, seed: int, noise: float = 0.8) -> np.ndarray:
    """Queries near indexed vectors (a text near its video): ``normalise(row + noise)``."""
    rng = np.random.default_rng(seed + 1)
    x = data[rng.choice(len(data), q, replace=False)].copy()
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(noise / np.sqrt(data.shape[1]))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _per_query_ms(fn: Callable[[np.ndarray], object], queries: np.ndarray) -> dict[str, float]:
    fn(queries[:1])  # warm
    times = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q[None])
        times.append(1000 * (time.perf_counter() - t0))
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 3),
        "p95_ms": round(times[int(0.95 * (len(times) - 1))], 3),
    }


def _recall(rows: np.ndarray, truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(r) & set(t)) / len(t) for r, t in zip(rows, truth, strict=True)])), 4)


def bench_ann_size(
    data: np.ndarray, queries: np.ndarray, kinds: list[str], nprobes: list[int], k: int, exact_queries: int
) -> dict[str, object]:
    """Exact search (``topk``, the default) and each approximate kind on ``data``: recall@k against exact
    search, p50/p95 per single query, build time and memory."""
    import faiss

    from discovla.ann import AnnParams, build_ann

    n, dim = data.shape
    out: dict[str, object] = {"videos": n, "dim": dim, "k": k, "queries": len(queries)}
    flat = faiss.IndexFlatIP(dim)  # ground truth: exact inner product, every vector
    flat.add(data)
    _, truth = flat.search(queries, k)
    del flat
    emb = torch.from_numpy(data)
    out["exact"] = {
        **_per_query_ms(lambda q: topk(torch.from_numpy(q), emb, k), queries[:exact_queries]),
        "memory_mb": round(data.nbytes / 2**20, 1),
    }
    _, rows = topk(torch.from_numpy(queries[:exact_queries]), emb, k)
    out["exact"]["recall_vs_faiss_flat"] = _recall(rows.numpy(), truth[:exact_queries])
    for kind in kinds:
        before = _rss_mb()
        t0 = time.perf_counter()
        index = build_ann(data, AnnParams(kind=kind), {})
        build_s = time.perf_counter() - t0
        res: dict[str, object] = {
            "params": {key: v for key, v in index.meta["params"].items() if v is not None},
            "build_s": round(build_s, 1),
            "memory_mb": round(_rss_mb() - before, 1),
        }
        sweep = nprobes if kind != "hnsw" else [0]
        for nprobe in sweep:
            _, rows = index.search(queries, k, data, nprobe=nprobe or None)
            timing = _per_query_ms(
                lambda q, p=nprobe, ix=index: ix.search(q, k, data, nprobe=p or None), queries
            )
            key = f"nprobe={nprobe}" if kind != "hnsw" else f"efSearch={index.params.ef_search}"
            res[key] = {"recall_at_k": _recall(rows, truth), **timing}
            print(f"  {n} {kind} {key}: {res[key]}", flush=True)
        out[kind] = res
        del index
    return out


@app.command("ann")
def ann_bench(
    sizes: list[int] = typer.Option([100_000, 1_000_000], help="Videos (synthetic unit vectors)."),
    dim: int = typer.Option(512, help="Embedding width (ViT-B/16: 512)."),
    kinds: list[str] = typer.Option(["ivf"], help="Approximate kinds at every size."),
    small_kinds: list[str] = typer.Option(["ivfpq", "hnsw"], help="Kinds at the smallest size only."),
    nprobes: list[int] = typer.Option([8, 16, 32, 64], help="IVF cells scanned, swept."),
    k: int = typer.Option(10, help="recall@k."),
    queries: int = typer.Option(200, help="Queries per measurement (single-query latency)."),
    exact_queries: int = typer.Option(20, help="Queries timed for exact search."),
    threads: int = typer.Option(1, help="CPU threads (FAISS and torch): 1 = one core."),
    out: str = typer.Option("benchmarks/results/search_ann.json", help="Results JSON."),
) -> None:
    """FAISS (``discovla index --ann``) against exact search on synthetic unit vectors of width ``dim``:
    clustered ones (``n/1000`` directions, queries near indexed vectors: structure like real embeddings)
    at every size, and uniform ones (no structure: the worst case) at the smallest."""
    import faiss

    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    result: dict[str, object] = {
        "device": f"cpu x{threads} thread(s), {platform.machine()}, 2 cores shared with a training job",
        "faiss": faiss.__version__,
        "data": "clustered: n/1000 random directions, each vector normalise(centre + noise of norm 1.2); "
        "queries normalise(indexed vector + noise of norm 0.8)",
        "sizes": {},
    }
    for i, n in enumerate(sorted(sizes)):
        t0 = time.perf_counter()
        data = clustered(n, dim, seed=n)
        q = _queries(data, queries, seed=n)
        print(f"{n} x {dim}: data in {time.perf_counter() - t0:.1f} s", flush=True)
        result["sizes"][str(n)] = bench_ann_size(
            data, q, kinds + (small_kinds if i == 0 else []), nprobes, k, exact_queries
        )
        del data
        if i == 0:
            data = uniform(n, dim, seed=n)
            q = _queries(data, queries, seed=n, noise=0.8)
            result["uniform_" + str(n)] = bench_ann_size(data, q, ["ivf"], nprobes, k, exact_queries)
            del data
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app()
