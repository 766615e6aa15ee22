"""Stage ``shapes``: generate the embedded shapes world.

Reads params ``shapes``. Writes ``<out>/{videos/, captions.csv, twins.csv, frame_truth.parquet, stills/}``
atomically, and the world's statistics with the run's timings (not DVC metrics: a diff of them would
only show timing noise).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from discovla.config import load_params_or_exit
from discovla.data.shapes import generate_world
from discovla.errors import run_stage
from discovla.io import write_json


def main(
    out: Path = typer.Option(..., help="Directory of the generated world (the shapes dataset root)."),
    info: Path = typer.Option(..., help="World statistics and timings JSON (not a DVC metric)."),
) -> None:
    params = load_params_or_exit()
    workers = max(1, min(2, os.cpu_count() or 1))
    stats = generate_world(params.shapes, out, workers=workers)
    stats["workers"] = workers
    write_json(info, stats)
    counts = ", ".join(f"{split} {m['videos']}" for split, m in stats["splits"].items())
    stills = sum(m["images"] for m in stats["stills"].values())
    print(f"shapes: videos {counts}; {stills} stills; {stats['seconds']:.1f} s -> {out}")


if __name__ == "__main__":
    run_stage(main)
