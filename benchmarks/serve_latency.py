"""Benchmark: `discovla serve` over HTTP: request latency (p50/p95) and process start to first answer.

    python benchmarks/serve_latency.py --adapters models/discovla --index data/index/test

For each index served (the given one, e.g. the pipeline's 500 test videos, then synthetic ones of
``--videos`` random unit vectors at the model's width under the same model: exact, and with ``--ann ivf``),
in a fresh ``discovla serve`` process (``--threads`` torch/FAISS threads, default one):
``start_to_first_answer_s`` is from spawning the process to the first 200 answer of ``GET /api/search``
(interpreter, imports, model and index load, the first query); then ``--requests`` sequential
``GET /api/search?q=...&k=10`` on one keep-alive connection after ``--warmup`` untimed ones: client-side
wall p50/p95 and the server's own ``took_ms`` (text encoding + search). ``oneshot_search_s``: one
``discovla search QUERY --index ...`` from the shell, for comparison. Results:
``benchmarks/results/serve_latency.json``.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch
import typer

from discovla.ann import AnnParams, build_ann
from discovla.artifacts.index import VideoIndex, read_index, write_index
from discovla.io import write_json
from discovla.retriever import Retriever

QUERIES = [
    "a red circle slides to the left",
    "a small blue square moves up",
    "a large green triangle in the middle turns yellow",
    "two objects: a white star and a purple circle drifting apart",
    "a tiny orange square near the bottom edge stays still",
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {
        "p50_ms": round(statistics.median(times), 3),
        "p95_ms": round(times[int(0.95 * (len(times) - 1))], 3),
    }


def _env(threads: int) -> dict[str, str]:
    repo = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONPATH": path,
    }


def bench_server(index: Path, adapters: str, requests: int, warmup: int, threads: int = 1) -> dict[str, Any]:
    """Start ``discovla serve`` on ``index``, time the first answer, then ``requests`` requests."""
    port = _port()
    cmd = [sys.executable, "-m", "discovla.cli", "serve", "--index", str(index), "--adapters", adapters]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "--device", "cpu"], env=_env(threads), stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}/api/search"
    try:
        with httpx.Client(timeout=60) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"discovla serve exited: {proc.stderr.read().decode()[-2000:]}")
                try:
                    first = client.get(url, params={"q": QUERIES[0], "k": 10})
                    if first.status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.02)
            start_s = time.perf_counter() - t0
            wall, took = [], []
            for i in range(warmup + requests):
                t = time.perf_counter()
                res = client.get(url, params={"q": QUERIES[i % len(QUERIES)], "k": 10})
                dt = 1000 * (time.perf_counter() - t)
                assert res.status_code == 200, res.text
                if i >= warmup:
                    wall.append(dt)
                    took.append(res.json()["took_ms"])
            body = res.json()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "videos": len(read_index(index, ann=False)),
        "approximate": body["approximate"],
        "start_to_first_answer_s": round(start_s, 2),
        "http": _pct(wall),
        "server_took": _pct(took),
        "requests": requests,
    }


def synthetic_index(n: int, dim: int, ann: str | None, identity: dict[str, Any]) -> VideoIndex:
    """``n`` random unit vectors of width ``dim``, recorded as made by the model of ``identity``
    (:attr:`discovla.retriever.Retriever.identity`: adapters and frozen weights)."""
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    meta = {"model": dict(identity), "source": {"kind": "synthetic"}}
    index = VideoIndex([f"video{i:07d}" for i in range(n)], [""] * n, emb, meta)
    if ann:
        index.ann = build_ann(emb, AnnParams(kind=ann), meta["model"])
    return index


def main(
    adapters: str = typer.Option("models/discovla", help="Trained adapters (train stage)."),
    index: str = typer.Option("data/index/test", help="A real index of this model (the 500 test videos)."),
    videos: list[int] = typer.Option([100_000], help="Synthetic index sizes."),
    requests: int = typer.Option(200, help="Timed requests per server."),
    warmup: int = typer.Option(10, help="Untimed requests first."),
    out: str = typer.Option("benchmarks/results/serve_latency.json", help="Results JSON."),
    threads: int = typer.Option(1, help="torch/FAISS threads per server (OMP_NUM_THREADS)."),
    vit_work: str | None = typer.Option(
        None,
        help="Also serve the synthetic indexes at width 512 with ViT-B/16 (random weights and untrained "
        "adapters written here, as benchmarks/load_search.py makes them: 600 MB).",
    ),
) -> None:
    result: dict[str, Any] = {
        "adapters": adapters,
        "device": f"cpu, {threads} thread(s) per server, {platform.machine()}, {os.cpu_count()} cores",
        "threads": threads,
        "load_avg_before": [round(x, 2) for x in os.getloadavg()],  # other work on the machine
        "servers": {},
    }
    t0 = time.perf_counter()
    cmd = [
        sys.executable,
        "-m",
        "discovla.cli",
        "search",
        QUERIES[0],
        "--index",
        index,
        "--adapters",
        adapters,
    ]
    subprocess.run([*cmd, "--device", "cpu"], env=_env(threads), check=True, capture_output=True)
    result["oneshot_search_s"] = round(time.perf_counter() - t0, 2)
    result["servers"][f"{Path(index).name} (exact)"] = bench_server(
        Path(index), adapters, requests, warmup, threads
    )
    print(json.dumps(result, indent=2), flush=True)
    models = [(adapters, read_index(Path(index), ann=False).dim, "")]
    if vit_work:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from load_search import make_model

        models.append((str(make_model(Path(vit_work), 12)), 512, ", ViT-B/16"))
    with tempfile.TemporaryDirectory() as tmp:
        for model, dim, label in models:
            identity = Retriever.load(model, device="cpu").identity  # what the server checks indexes against
            for n in videos:
                for ann in (None, "ivf"):
                    path = Path(tmp) / f"synthetic-{n}-{dim}-{ann or 'exact'}"
                    write_index(path, synthetic_index(n, dim, ann, identity))
                    name = f"synthetic {n} x {dim} ({ann or 'exact'}{label})"
                    result["servers"][name] = bench_server(path, model, requests, warmup, threads)
                    print(json.dumps(result["servers"], indent=2), flush=True)
    result["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    write_json(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
