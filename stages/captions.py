"""Stage ``captions``: one pseudo caption per sampled frame (BLIP captioner, ``oracle``, or imported JSON).

Reads params ``data`` and ``captioner``, ``engine.captions`` (``ray`` captions on an actor
pool of captioners on Ray, resumable parts under ``--work``), the frames store and, on the shapes world,
``<data.root>/frame_truth.parquet``. Writes the captions table (video_id, frame, caption: exactly one row
per frame row) and its metrics (counts, speed, agreement with the shapes ground truth).
"""

from __future__ import annotations

from pathlib import Path

import typer

from discovla.artifacts.captions import write_captions
from discovla.artifacts.metrics import write_metrics
from discovla.captioning import make_captions
from discovla.config import load_params_or_exit
from discovla.errors import run_stage


def main(
    frames: Path = typer.Option(..., help="Frames store (frames stage)."),
    out: Path = typer.Option(..., help="Captions table to write (Parquet)."),
    metrics: Path = typer.Option(..., help="Captions metrics JSON."),
    info: Path = typer.Option(..., help="Run information JSON: timings, speeds, device (not a DVC metric)."),
    work: Path = typer.Option(
        Path(".work/captions"),
        help="Scratch directory of the ray engine's resumable parts (removed on success).",
    ),
) -> None:
    params = load_params_or_exit()
    engine = params.engine
    c = params.captioner
    captions, stats = make_captions(
        c.model,
        frames,
        batch_size=c.batch_size,
        max_new_tokens=c.max_new_tokens,
        num_beams=c.num_beams,
        dataset=params.data.dataset,
        root=params.data.root,
        engine=engine,
        work_dir=work,
    )
    write_captions(out, captions)
    write_metrics(metrics, info, stats)
    agreement = stats.get("agreement", {})
    extra = f", exact match {agreement['exact_match']:.3f}" if agreement else ""
    print(
        f"captions: {stats['frames']} frames of {stats['videos']} videos, {stats['empty_captions']} empty, "
        f"{stats['captions_per_s']:.0f}/s{extra} -> {out}"
    )


if __name__ == "__main__":
    run_stage(main)
