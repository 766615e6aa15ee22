"""Stage ``frames``: sample F frames per video with ffmpeg into Parquet shards.

Reads params sections ``data`` and ``frames`` and the dataset at ``data.root``. Writes ``data/frames/``
(shards, videos.csv, skipped.csv; see docs/formats.md) and ``metrics/frames.json``. Unreadable videos are
listed in skipped.csv and the stage still succeeds; it fails (one line, non-zero status) only when the
dataset itself cannot be read, has no videos, or no video at all could be sampled.
"""

from __future__ import annotations

from discovla.config import load_params_or_exit
from discovla.data import DatasetError, load_dataset
from discovla.errors import run_stage
from discovla.io import write_json
from discovla.video import extract_frames

OUT_DIR = "data/frames"
METRICS = "metrics/frames.json"
WORK_DIR = ".work/frames"


def main() -> None:
    params = load_params_or_exit()
    data, fp = params.data, params.frames
    dataset = load_dataset(data.dataset, data.root)
    if len(dataset.videos) == 0:
        raise DatasetError(f"frames: dataset {data.dataset!r} at {data.root} lists no videos")
    metrics = extract_frames(
        dataset.videos,
        OUT_DIR,
        num_frames=fp.num_frames,
        size=fp.size,
        workers=fp.workers,
        shard_rows=fp.shard_rows,
        work_dir=WORK_DIR,
        max_fps=fp.max_fps or None,
    )
    write_json(METRICS, metrics)
    reasons = ", ".join(f"{k}: {v}" for k, v in metrics["skipped_by_reason"].items())
    print(
        f"frames: {metrics['done']}/{metrics['videos']} videos sampled, {metrics['skipped']} skipped"
        f"{f' ({reasons})' if reasons else ''}, {metrics['repeated']} with repeated frames, "
        f"{metrics['frames']} frames in {metrics['shards']} shard(s), {metrics['videos_per_s']:.1f} videos/s "
        f"-> {OUT_DIR}"
    )
    if metrics["done"] == 0:
        raise DatasetError(f"frames: no video could be sampled ({reasons}); see {OUT_DIR}/skipped.csv")


if __name__ == "__main__":
    run_stage(main)
