"""Benchmark: opening a feature cache and a `discovla search` process cost the same at any cache size.

    python benchmarks/load_search.py run                        # 500, 2,000 and 8,000 videos of 12 x 224 px
    python benchmarks/load_search.py run --videos 50 --videos 200 --repeats 2    # a quick look

Caches are the synthetic ones of ``benchmarks/streaming.py`` (seeded random pixels in the features stage's
layout, kept under ``--work``: 14 GB for 8,000 videos). For each size, in fresh processes:

- ``load_s``: :func:`discovla.artifacts.features.load_features` as every stage, ``discovla search`` and the
  split-index check call it now (the files checked against the cache's manifest by size and time);
- ``verify_s``: the same with ``verify=True``, which hashes every byte: what every load cost before
  manifests (the content digest was recomputed on each load);
- ``search_wall_s``: ``discovla search QUERY --features CACHE`` from the shell (interpreter start, torch and
  open_clip imports, model load, the default index's freshness check against the cache, the query),
  median of ``--repeats``; ``query_ms``: the query alone (text encoding and top-k), in process.

The model is the real target's architecture, OpenAI CLIP ViT-B/16 (random weights saved as a local
checkpoint: no download; 600 MB read per search process, as a user's would be) with untrained DiscoVLA
adapters for 12 frames. The default index ``data/index/test`` of each run directory holds random unit
vectors for the cache's test videos under that model, with the cache's digest: what the first search
builds once (embedding 8,000 x 12 frames with ViT-B/16 on 2 CPU cores would take hours, and is not what
is measured). Results go to ``benchmarks/results/load_search.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streaming import synthetic_cache  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])
QUERY = "a red circle slides to the left"
BACKBONE = "ViT-B-16"


def make_model(work: Path, frames: int) -> Path:
    """ViT-B/16 with random weights as a local checkpoint, and untrained adapters for ``frames`` frames."""
    from discovla.artifacts.adapters import save_adapters
    from discovla.backbone import load_backbone
    from discovla.clip_factory import HF_SAFE_WEIGHTS, save_clip
    from discovla.model import DiscoVLA, DiscoVLAConfig

    adapters = work / f"adapters-{BACKBONE}-f{frames}"
    if (adapters / "config.json").is_file():
        return adapters
    torch.manual_seed(0)
    ckpt = work / BACKBONE / HF_SAFE_WEIGHTS
    if not ckpt.is_file():
        save_clip(load_backbone(BACKBONE, None, context_length=32).model, BACKBONE, ckpt.parent, {})
    clip = load_backbone(BACKBONE, str(ckpt), context_length=32).model
    model = DiscoVLA(clip, DiscoVLAConfig(num_frames=frames))
    save_adapters(adapters, model, {"backbone": BACKBONE, "pretrained": str(ckpt), "context_length": 32})
    return adapters


def make_run_dir(run: Path, cache: Path, adapters: Path) -> None:
    """``run/data/features`` (a link to the cache) and the default index ``run/data/index/test``."""
    from discovla.artifacts.features import cache_digest, load_features
    from discovla.artifacts.index import VideoIndex, write_index
    from discovla.retriever import Retriever

    (run / "data").mkdir(parents=True, exist_ok=True)
    link = run / "data" / "features"
    if not link.exists():
        link.symlink_to(cache.resolve())
    features = load_features(cache)
    retriever = Retriever.load(adapters, device="cpu")
    test = features.split_videos("test")
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(len(test), retriever.embed_dim, generator=gen), dim=-1)
    source = {"kind": "split", "split": "test", "features_digest": cache_digest(cache), "features": str(link)}
    write_index(
        run / "data" / "index" / "test",
        VideoIndex(
            video_ids=[features.video_ids[i] for i in test],
            paths=[""] * len(test),
            embeddings=emb,
            meta={**retriever.index_meta(), "source": source},
        ),
    )


@app.command(hidden=True)
def load(cache: Path, verify: bool = False) -> None:
    """Time one load_features in this (fresh) process; prints a JSON line."""
    from discovla.artifacts.features import load_features

    t0 = time.perf_counter()
    features = load_features(cache, verify=verify)
    print(json.dumps({"seconds": time.perf_counter() - t0, "videos": len(features.video_ids)}))


@app.command(hidden=True)
def query(run: Path, adapters: Path, repeats: int = 20) -> None:
    """Median time of one query (encode the text, top-k over the loaded index), in process."""
    from discovla.retriever import Retriever

    retriever = Retriever.load(adapters, device="cpu")
    index = retriever.open_index(run / "data" / "index" / "test")
    retriever.search(QUERY, k=5, index=index)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        retriever.search(QUERY, k=5, index=index)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"query_ms": statistics.median(times) * 1000}))


def _python(*args: str, cwd: Path | None = None) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def search_wall(run: Path, adapters: Path) -> tuple[float, str]:
    """Wall seconds of `discovla search` from the shell, run in ``run`` (its default index), and stdout."""
    exe = Path(sys.executable).with_name("discovla")
    cmd = [str(exe), "search", QUERY, "--k", "5", "--adapters", str(adapters.resolve()), "--device", "cpu"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=run, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0 or done.stderr.strip():
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return wall, done.stdout


def measure(videos: list[int], frames: int, size: int, repeats: int, work: Path) -> dict[str, Any]:
    adapters = make_model(work, frames)
    runs = []
    for n in videos:
        cache = synthetic_cache(work / f"v{n}-f{frames}-s{size}", n, frames, size)
        gib = sum(f.stat().st_size for f in cache.iterdir() if f.is_file()) / 2**30
        run = work / f"search-v{n}"
        make_run_dir(run, cache, adapters)
        loads = [_python("load", str(cache))["seconds"] for _ in range(repeats)]
        verify = _python("load", str(cache), "--verify")["seconds"]
        search_wall(run, adapters)  # warm the page cache for the checkpoint (a user's second search)
        walls = [search_wall(run, adapters)[0] for _ in range(repeats)]
        q = _python("query", str(run), str(adapters.resolve()))
        runs.append(
            {
                "videos": n,
                "cache_gib": round(gib, 2),
                "load_s": round(statistics.median(loads), 3),
                "verify_s": round(verify, 2),
                "search_wall_s": round(statistics.median(walls), 2),
                "search_wall_all_s": [round(w, 2) for w in walls],
                "query_ms": round(q["query_ms"], 2),
            }
        )
        print(json.dumps(runs[-1]), flush=True)
    return {"frames": frames, "size": size, "backbone": BACKBONE, "runs": runs}


@app.command("run")
def main(
    videos: list[int] = typer.Option([500, 2000, 8000], help="Cache sizes (videos); repeat the option."),
    frames: int = typer.Option(12, help="Frames per video."),
    size: int = typer.Option(224, help="Frame size (px)."),
    repeats: int = typer.Option(3, help="Fresh processes per measurement (the median is reported)."),
    work: Path = typer.Option(Path(".work/bench/streaming"), help="Where caches and the model are kept."),
    out: Path = typer.Option(Path("benchmarks/results/load_search.json"), help="Results JSON."),
) -> None:
    """Load time and search-process wall time against cache size (see the module docstring)."""
    from train_step import device_name

    result = measure(videos, frames, size, repeats, work)
    result.update(
        machine=f"{len(os.sched_getaffinity(0))} CPU cores, {device_name(torch.device('cpu'))}",
        torch=torch.__version__,
        command="python benchmarks/load_search.py " + " ".join(sys.argv[1:]),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    app()
