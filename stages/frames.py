"""Stage ``frames``: sample F frames per video (PyAV, in process) into the frames store (Parquet shards).

Reads params ``data`` and ``frames``, ``engine.frames`` (``ray`` samples as a Ray Data
pipeline, :mod:`discovla.ray_engine`) and the dataset at ``data.root``. Writes the store (shards,
videos.csv, skipped.csv; see docs/formats.md) and its metrics, which count the annotation rows the dataset
reader skipped (``discovla datasets check`` lists them with their reasons). Unreadable videos are listed
in skipped.csv and the stage still succeeds; it fails (one line, non-zero status) only when the dataset
itself cannot be read, has no videos, or no video at all could be sampled. A rerun after a crash decodes
only the batches of videos not yet done (kept under ``--work``).
"""

from __future__ import annotations

from pathlib import Path

import typer

from discovla.artifacts.metrics import write_metrics
from discovla.config import load_params_or_exit
from discovla.data import DatasetError
from discovla.data.registry import load_dataset
from discovla.errors import run_stage
from discovla.extraction import extract_frames


def main(
    out: Path = typer.Option(..., help="Directory of the frames store."),
    metrics: Path = typer.Option(..., help="Frames metrics JSON (counts)."),
    info: Path = typer.Option(..., help="Run information JSON: timings, speeds, device (not a DVC metric)."),
    work: Path = typer.Option(..., help="Scratch directory for resumable batches (removed on success)."),
) -> None:
    params = load_params_or_exit()
    engine = params.engine
    data, fp = params.data, params.frames
    dataset = load_dataset(data.dataset, data.root)
    if len(dataset.videos) == 0:
        raise DatasetError(f"frames: dataset {data.dataset!r} at {data.root} lists no videos")
    stats = extract_frames(
        dataset.videos,
        out,
        num_frames=fp.num_frames,
        size=fp.size,
        workers=fp.workers,
        shard_rows=fp.shard_rows,
        work_dir=work,
        max_fps=fp.max_fps or None,
        engine=engine,
    )
    stats["annotation_rows_skipped"] = len(dataset.skipped)
    write_metrics(metrics, info, stats)
    reasons = ", ".join(f"{k}: {v}" for k, v in stats["skipped_by_reason"].items())
    print(
        f"frames: {stats['done']}/{stats['videos']} videos sampled, {stats['skipped']} skipped"
        f"{f' ({reasons})' if reasons else ''}, {stats['repeated']} with repeated frames, "
        f"{stats['frames']} frames in {stats['shards']} shard(s), {stats['videos_per_s']:.1f} videos/s "
        f"-> {out}"
    )
    if len(dataset.skipped):
        by_reason = dataset.skipped.reason.value_counts()
        print(
            f"frames: the {data.dataset} reader skipped {len(dataset.skipped)} annotation row(s) ("
            + ", ".join(f"{r}: {n}" for r, n in by_reason.items())
            + f"); `discovla datasets check {data.dataset} {data.root}` lists them"
        )
    if stats["done"] == 0:
        raise DatasetError(f"frames: no video could be sampled ({reasons}); see {out}/skipped.csv")


if __name__ == "__main__":
    run_stage(main)
