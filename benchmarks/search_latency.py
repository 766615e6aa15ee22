"""Benchmark: milliseconds per text query of ``Retriever.search`` (text encoding + chunked scores + top-k).

    python benchmarks/search_latency.py --adapters models/discovla --features data/features

Two indexes: the test split of the feature cache (embedded in memory with the trained adapters, nothing is
written) and a synthetic index of ``--videos`` random L2-normalised embeddings at the model's width; plus
the synthetic index at ViT-B/16's width (512, search only: a random query). Reports the median and 95th
percentile over ``--queries`` queries after ``--warmup`` untimed ones, the two parts separately, the time
to read the synthetic index back from Parquet, and the largest allocation a search makes (torch profiler):
O(chunk), ``Q x chunk`` float32 scores, never a score per video.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import typer

from discovla.artifacts.features import load_features
from discovla.artifacts.index import CHUNK_ROWS, VideoIndex, read_index, topk, write_index
from discovla.indexing import split_index
from discovla.retriever import Retriever

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


def main(
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


if __name__ == "__main__":
    typer.run(main)
