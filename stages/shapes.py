"""Stage ``shapes``: generate the embedded shapes world into ``data/shapes`` (fixed path, the dvc out).

Reads params section ``shapes``. Writes ``data/shapes/{videos/, captions.csv, twins.csv,
frame_truth.parquet, stills/}`` atomically and ``metrics/shapes.json``.
"""

from __future__ import annotations

import os

from discovla.config import load_params_or_exit
from discovla.data.shapes import generate_world
from discovla.errors import run_stage
from discovla.io import write_json

ROOT = "data/shapes"
METRICS = "metrics/shapes.json"


def main() -> None:
    params = load_params_or_exit()
    workers = max(1, min(2, os.cpu_count() or 1))
    metrics = generate_world(params.shapes, ROOT, workers=workers)
    metrics["workers"] = workers
    write_json(METRICS, metrics)
    counts = ", ".join(f"{split} {m['videos']}" for split, m in metrics["splits"].items())
    stills = sum(m["images"] for m in metrics["stills"].values())
    print(f"shapes: videos {counts}; {stills} stills; {metrics['seconds']:.1f} s -> {ROOT}")


if __name__ == "__main__":
    run_stage(main)
