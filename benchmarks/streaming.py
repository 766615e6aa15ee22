"""Benchmark: host memory of a training epoch does not grow with the dataset (the cache streams from disk).

    python benchmarks/streaming.py run                    # 500 and 2,000 videos of 12 x 224 px
    python benchmarks/streaming.py run --videos 50 --videos 200 --size 64 --frames 4   # a quick look

For each size it writes a synthetic feature cache in the features stage's layout
(:func:`discovla.artifacts.features.save_features`; seeded random pixels, 2 captions per video, 80% of the
videos in train) under ``--work`` (kept between runs: 3.6 GB for 2,000 videos), then runs ONE training
epoch of the real loop (:func:`discovla.train.train`, ``sampling: videos``) in a fresh process, so each
peak is its own. The model is a randomly initialised open_clip CLIP at the cache's image size whose
towers are kept small (patch 32, width 64, 2 layers): what is measured is the data path, not the model.

Two modes per size:

- ``stream``: what training does: the pixels stay on disk, read one batch at a time by ``--workers``
  loader processes;
- ``memory``: the previous behaviour for contrast: every pixel of the cache loaded into RAM first.

Reported per run: peak resident memory (``ru_maxrss``) of the training process and of the largest loader
worker, the epoch's seconds and the fraction of it spent waiting for data. Results go to
``benchmarks/results/streaming.json``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import typer

from discovla.artifacts.features import Features, load_features, save_features

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


class SyntheticPixels:
    """Seeded random uint8 frames, one video at a time (a 3.6 GB cache is never held in memory)."""

    def __init__(self, videos: int, frames: int, size: int, seed: int = 0) -> None:
        self.shape = (videos, frames, 3, size, size)
        self.seed = seed

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, int(i)])
        return torch.from_numpy(rng.integers(0, 256, size=self.shape[1:], dtype=np.uint8))


def synthetic_cache(out: Path, videos: int, frames: int, size: int, dim: int = 64, ctx: int = 32) -> Path:
    """A feature cache of ``videos`` random videos in the features stage's layout (reused if present)."""
    if (out / "meta.json").exists():
        return out
    rng = np.random.default_rng(videos)
    ids = [f"video{i:06d}" for i in range(videos)]
    split = np.where(np.arange(videos) < int(0.8 * videos), "train", "test")
    caps = pd.DataFrame(
        [
            (v, s, f"caption {k} of {v}", i)
            for i, (v, s) in enumerate(zip(ids, split, strict=True))
            for k in range(2)
        ],
        columns=["video_id", "split", "caption", "video_index"],
    )
    caps.insert(0, "caption_id", range(len(caps)))

    def tokens(shape: tuple[int, ...]) -> torch.Tensor:
        t = np.zeros((*shape, ctx), np.int64)
        t[..., 0], t[..., 1:12] = 49406, rng.integers(300, 2000, size=(*shape, 11))
        t[..., 12] = 49407
        return torch.from_numpy(t)

    def unit(*shape: int) -> torch.Tensor:
        return torch.nn.functional.normalize(
            torch.from_numpy(rng.standard_normal((*shape, dim), np.float32)), dim=-1
        )

    features = Features(
        meta={"mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28], "logit_scale": 100.0, "embed_dim": dim},
        video_ids=ids,
        video_split=split,
        pixels=SyntheticPixels(videos, frames, size),  # type: ignore[arg-type]
        pseudo_tokens=tokens((videos, frames)),
        captions=caps,
        cap_tokens=tokens((len(caps),)),
        twins=pd.DataFrame(columns=["video_id", "twin_id", "kind", "split"]),
        frame_emb=unit(videos, frames),
        pseudo_emb=unit(videos, frames),
        cap_emb=unit(len(caps)),
    )
    return save_features(features, out)


def small_clip(size: int) -> Any:
    """A random open_clip CLIP at ``size`` px with small towers (patch 32, width 64, 2 layers each)."""
    import open_clip

    torch.manual_seed(0)
    return open_clip.CLIP(
        embed_dim=64,
        vision_cfg={"image_size": size, "patch_size": 32, "width": 64, "layers": 2, "head_width": 32},
        text_cfg={"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    ).eval()


def _peak_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


@app.command(hidden=True)
def epoch(cache: Path, mode: str = "stream", workers: int = 2, batch: int = 32) -> None:
    """One training epoch on ``cache`` in this process; prints a JSON line."""
    from discovla.model import DiscoVLAConfig
    from discovla.train import TrainConfig, train

    features = load_features(cache)
    if mode == "memory":
        features.pixels = features.pixels[np.arange(len(features.video_ids))]
    cfg = TrainConfig(
        epochs=1,
        batch_size=batch,
        sampling="videos",
        device="cpu",
        workers=workers if mode == "stream" else 0,
        model=DiscoVLAConfig(
            lora_rank=4, vision_layers=1, text_layers=1, adapter_dim=8, num_frames=features.num_frames
        ),
    )
    t0 = time.perf_counter()
    _, record = train(
        small_clip(features.meta["image_size"]), features, cfg, cache / "ckpt-bench", progress=False
    )
    shutil.rmtree(cache / "ckpt-bench", ignore_errors=True)
    e = record["epochs"][0]
    out = {
        "mode": mode,
        "workers": cfg.workers,
        "videos": len(features.video_ids),
        "epoch_s": round(time.perf_counter() - t0, 2),
        "data_wait": round(e["data_wait"], 4),
        "peak_rss_mib": round(_peak_mib(resource.RUSAGE_SELF), 1),
        "peak_rss_worker_mib": round(_peak_mib(resource.RUSAGE_CHILDREN), 1) if cfg.workers else None,
    }
    print(json.dumps(out))


def measure(
    videos: list[int],
    frames: int,
    size: int,
    workers: int,
    work: Path,
    modes: tuple[str, ...] = ("stream", "memory"),
) -> dict[str, Any]:
    """Build each cache size and run one epoch per mode in a fresh process; the results as a dict."""
    runs = []
    for n in videos:
        cache = synthetic_cache(work / f"v{n}-f{frames}-s{size}", n, frames, size)
        gib = sum(f.stat().st_size for f in cache.iterdir() if f.is_file()) / 2**30
        for mode in modes:
            cmd = [sys.executable, __file__, "epoch", str(cache), "--mode", mode, "--workers", str(workers)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
            run = json.loads(done.stdout.strip().splitlines()[-1])
            runs.append({**run, "cache_gib": round(gib, 3)})
            print(json.dumps(runs[-1]), flush=True)
    return {"frames": frames, "size": size, "runs": runs}


@app.command("run")
def main(
    videos: list[int] = typer.Option([500, 2000], help="Cache sizes (videos); repeat the option."),
    frames: int = typer.Option(12, help="Frames per video."),
    size: int = typer.Option(224, help="Frame size (px)."),
    workers: int = typer.Option(2, help="Loader worker processes in stream mode."),
    work: Path = typer.Option(Path(".work/bench/streaming"), help="Where the synthetic caches are kept."),
    out: Path = typer.Option(Path("benchmarks/results/streaming.json"), help="Results JSON."),
) -> None:
    """Peak RSS of one training epoch on synthetic caches of several sizes, streamed vs held in memory."""
    result = measure(videos, frames, size, workers, work)
    result.update(
        machine=platform.machine(),
        cpus=len(os.sched_getaffinity(0)),
        torch=torch.__version__,
        command="python benchmarks/streaming.py " + " ".join(sys.argv[1:]),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    app()
