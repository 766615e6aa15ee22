"""Benchmark: the report's frame-strip reading against the size of the frames store.

    python benchmarks/report_time.py                          # 500, 2,000 and 8,000 videos (~3 min, 2 CPUs)
    python benchmarks/report_time.py --sizes 200,800 --shown 30

Builds synthetic frames stores in the pipeline's format (12 frames of 224 px per video, written by the
frames stage's own shard writer: one row group per video) and times, for ``--shown`` videos drawn at
random (the report shows about 60: the top-5 of a few queries and the confused twins):

- ``strips``: :func:`discovla.report.qualitative.frame_strips`, the report's reading of the shown videos'
  frames (a read of the store's index, then a filtered read of those videos' rows) and the strips' PNGs;
- ``full_scan``: the report's reading before, every row of the store decoded through
  :func:`discovla.artifacts.frames.iter_frame_batches` to keep the shown videos' frames.

The synthetic frames (a colour per video, a moving square, a fixed ramp texture) compress far better than
real footage, so the stores are small on disk (the full scan's cost is decompression and copying, not
disk reads); the page cache holds them. Best of ``--repeats``. Writes ``benchmarks/results/report_time.json``
(machine, command line, seconds per store size).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts

from train_step import device_name  # noqa: E402

from discovla.artifacts.frames import (  # noqa: E402
    FRAMES_SCHEMA,
    PARQUET_OPTIONS,
    encode_frames,
    iter_frame_batches,
)
from discovla.extraction import _write_shards  # noqa: E402
from discovla.io import write_json, write_parquet  # noqa: E402
from discovla.report.qualitative import frame_strips  # noqa: E402


def synthetic_store(out: Path, videos: int, frames: int, size: int, shard_rows: int = 50000) -> None:
    """A frames store of ``videos`` videos in the stage's layout (shards only: what the report reads)."""
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(size), np.arange(size)) % 16
    texture = np.stack([ramp, ramp[::-1], ramp.T], axis=-1).astype(np.uint8)
    out.mkdir(parents=True)
    parts_dir = Path(tempfile.mkdtemp(prefix="report-parts-"))
    parts: list[Path] = []
    batch = 64
    for first in range(0, videos, batch):
        cols: dict[str, list[Any]] = {name: [] for name in FRAMES_SCHEMA.names}
        for v in range(first, min(videos, first + batch)):
            colour = rng.integers(0, 200, 3, dtype=np.uint8)
            clip = np.broadcast_to(colour, (frames, size, size, 3)) + texture
            for f in range(frames):
                x = 8 + (size - 40) * f // max(1, frames - 1)
                clip[f, 40:72, x : x + 32] = 255
            cols["video_id"] += [f"video{v:06d}"] * frames
            cols["frame"] += list(range(frames))
            cols["timestamp"] += [0.5 * f for f in range(frames)]
            cols["image"] += encode_frames(clip)
        parts.append(parts_dir / f"part-{len(parts):05d}.parquet")
        write_parquet(parts[-1], pa.table(cols, schema=FRAMES_SCHEMA), **PARQUET_OPTIONS)
    _write_shards(out, parts, shard_rows, size, 1, None)  # the stage's own shard writer
    shutil.rmtree(parts_dir)


def full_scan(frames_dir: Path, video_ids: set[str]) -> int:
    """The report's frame reading before the filtered read: decode every row, keep the shown videos'."""
    kept = 0
    for keys, batch in iter_frame_batches(frames_dir, 2048):
        rows = np.flatnonzero(keys.video_id.isin(video_ids).to_numpy())
        kept += len(batch[rows])
    return kept


def _best(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(
    sizes: str = typer.Option("500,2000,8000", help="Store sizes in videos, comma-separated."),
    frames: int = typer.Option(12, help="Frames per video (the paper's 12)."),
    size: int = typer.Option(224, help="Frame size in pixels (the paper's 224)."),
    shown: int = typer.Option(60, help="Videos whose strips are drawn (the report shows about 60)."),
    repeats: int = typer.Option(3, min=1, help="Timed runs of the filtered read; the best is reported."),
    scan_repeats: int = typer.Option(1, min=1, help="Timed runs of the full scan."),
    out: Path = typer.Option(Path("benchmarks/results/report_time.json"), help="Results JSON."),
    work: Path | None = typer.Option(None, help="Where the stores are built (default: a temporary folder)."),
) -> None:
    """Time the report's frame-strip reading on synthetic frames stores of growing size."""
    counts = [int(s) for s in sizes.split(",") if s.strip()]
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for n in counts:
            store = Path(tmp) / f"frames-{n}"
            t0 = time.perf_counter()
            synthetic_store(store, n, frames, size)
            build_s = time.perf_counter() - t0
            ids = {f"video{v:06d}" for v in rng.choice(n, size=min(shown, n), replace=False)}
            strips = frame_strips(store, ids)
            assert len(strips) == len(ids)
            strips_s = _best(lambda store=store, ids=ids: frame_strips(store, ids), repeats)
            scan_s = _best(lambda store=store, ids=ids: full_scan(store, ids), scan_repeats)
            row = {
                "videos": n,
                "frames": n * frames,
                "store_bytes": _du(store),
                "build_s": round(build_s, 2),
                "strips_s": round(strips_s, 3),
                "full_scan_s": round(scan_s, 3),
            }
            print(
                f"{n:>6} videos ({row['store_bytes'] / 2**20:.0f} MiB): strips {strips_s:.3f} s, "
                f"full scan {scan_s:.3f} s",
                file=sys.stderr,
            )
            rows.append(row)
    first, last = rows[0], rows[-1]
    results = {
        "command": shlex.join(["python", *sys.argv]),
        "machine": device_name(torch.device("cpu")),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "params": {"frames": frames, "size": size, "shown": shown, "repeats": repeats},
        "stores": rows,
        "strips_growth": round(last["strips_s"] / first["strips_s"], 2),
        "full_scan_growth": round(last["full_scan_s"] / first["full_scan_s"], 2),
        "store_growth": round(last["videos"] / first["videos"], 2),
        "notes": [
            "strips_s: frame_strips (read the index, filtered read of the shown videos, draw the strips)",
            "full_scan_s: every row decoded, as the report read before",
            "synthetic frames compress far better than real footage: store_bytes understates a real store",
        ],
    }
    write_json(out, results)
    print(
        f"-> {out}: strips x{results['strips_growth']}, full scan x{results['full_scan_growth']} "
        f"for x{results['store_growth']} videos"
    )


if __name__ == "__main__":
    typer.run(main)
