"""Benchmark: writing the frames store from its resume parts (the last step of the frames stage).

\b
    nice python benchmarks/frames_assembly.py --videos 2048 --size 224 --workers 1,2

A synthetic set of resume parts of the real shape (``--batch`` videos a part, ``--frames`` raw RGB frames
of ``--size`` px each, as :func:`discovla.extraction._write_part` writes them; each frame a smooth random
image with a little noise, so zstd compresses it about as much as video frames) is written once into a
scratch directory; then the store's shards are written from it with each ``--workers`` count of threads
(:func:`discovla.extraction._write_shards`, as the stage does; the ``ray`` engine runs the same function as
one Ray task per shard). Every run's shards are compared byte for byte with the first one's. Reported: the
raw and on-disk GB, seconds, raw GB/s per run, and what that means for MSRVTT (10k videos) and for 10M
clips. Results go to ``--out``; nothing here is a test (no timing is asserted).
"""

from __future__ import annotations

import filecmp
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer

from discovla.artifacts.frames import encode_frames
from discovla.extraction import _write_part, _write_shards
from discovla.io import write_json


def _frames(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``n`` frames: a 8x8 random colour field upsampled to ``size`` plus noise of +-3 (uint8)."""
    coarse = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    reps = -(-size // 8)
    smooth = np.repeat(np.repeat(coarse, reps, axis=1), reps, axis=2)[:, :size, :size]
    noise = rng.integers(-3, 4, smooth.shape, dtype=np.int16)
    return np.clip(smooth.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def make_parts(folder: Path, videos: int, frames: int, size: int, batch: int, seed: int = 0) -> list[Path]:
    """Resume parts of ``videos`` synthetic videos, ``batch`` a part, in the stage's own part format."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for b, start in enumerate(range(0, videos, batch)):
        ids = [f"video{i:07d}" for i in range(start, min(videos, start + batch))]
        results = [
            {
                "video_id": v,
                "images": encode_frames(_frames(rng, frames, size)),
                "timestamps": [float(t) for t in range(frames)],
                "source_frames": 300,
                "duration": 10.0,
                "repeated": False,
            }
            for v in ids
        ]
        path = folder / f"part-{b:05d}.parquet"
        _write_part(path, results, dict.fromkeys(ids, "train"), {v: f"{v}.mp4" for v in ids})
        paths.append(path)
    return paths


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def main(
    videos: int = typer.Option(2048, help="Synthetic videos."),
    frames: int = typer.Option(12, help="Frames per video."),
    size: int = typer.Option(224, help="Frame size (px)."),
    batch: int = typer.Option(64, help="Videos per resume part (frames.batch_videos)."),
    shard_rows: int = typer.Option(50000, help="Rows per shard (the stage's default)."),
    workers: str = typer.Option("1,2", help="Comma-separated thread counts to time."),
    scratch: Path | None = typer.Option(None, help="Scratch directory (default: a temporary one)."),
    out: Path = typer.Option(Path("benchmarks/results/frames_assembly.json"), help="Results JSON."),
) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="assembly-", dir=scratch))
    try:
        t = time.perf_counter()
        parts = make_parts(tmp / "parts", videos, frames, size, batch)
        made = time.perf_counter() - t
        raw = videos * frames * size * size * 3
        result: dict[str, Any] = {
            "command": " ".join(["python", "benchmarks/frames_assembly.py", *map(shlex.quote, sys.argv[1:])]),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "load_avg_before": list(os.getloadavg()),
            "videos": videos,
            "frames": frames,
            "size": size,
            "batch": batch,
            "shard_rows": shard_rows,
            "parts": len(parts),
            "raw_gb": round(raw / 1e9, 3),
            "parts_gb_on_disk": round(_size(tmp / "parts") / 1e9, 3),
            "parts_made_s": round(made, 2),
            "runs": [],
        }
        first: Path | None = None
        for n in [int(w) for w in workers.split(",") if w.strip()]:
            store = tmp / f"store-{n}"
            store.mkdir()
            t = time.perf_counter()
            shards = _write_shards(store, parts, shard_rows, size, n, None)
            seconds = time.perf_counter() - t
            names = sorted(p.name for p in store.iterdir())
            same = first is None or (
                names == sorted(p.name for p in first.iterdir())
                and all(filecmp.cmp(first / n, store / n, shallow=False) for n in names)
            )
            first = first or store
            run = {
                "workers": n,
                "shards": shards,
                "seconds": round(seconds, 2),
                "raw_gb_per_s": round(raw / 1e9 / seconds, 3),
                "store_gb_on_disk": round(_size(store) / 1e9, 3),
                "identical_to_first": same,
            }
            result["runs"].append(run)
            typer.echo(json.dumps(run))
        best = max(r["raw_gb_per_s"] for r in result["runs"])
        result["extrapolated"] = {
            "msrvtt_10k_videos_18gb_raw_s": round(18.06 / best, 1),
            "10m_clips_12x224px_hours_on_this_machine": round(
                10e6 * 12 * 224 * 224 * 3 / 1e9 / best / 3600, 1
            ),
            "note": "raw GB over the best raw GB/s; shards are independent, so N machines writing shards "
            "(Ray tasks) divide it by N while the shared filesystem keeps up",
        }
        result["load_avg_after"] = list(os.getloadavg())
        write_json(out, result)
        typer.echo(f"wrote {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    typer.run(main)
