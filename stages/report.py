"""Stage ``report``: one self-contained HTML page of the run (metrics, curves, qualitative results, identity).

Reads params ``report`` (how many queries, seed, frames per strip) and every other section (the page
lists the params that differ from the defaults), the metrics directory, the frames store, the feature
cache and the trained adapters. Images are inline, so the page opens without network or any other file.
"""

from __future__ import annotations

from pathlib import Path

import typer

from discovla.config import load_params_or_exit
from discovla.errors import run_stage
from discovla.report import write_report
from discovla.runtime import resolve_device


def main(
    metrics_dir: Path = typer.Option(
        ..., help="Metrics directory (retrieval.json, train.json, the CSVs...)."
    ),
    frames: Path = typer.Option(..., help="Frames store (frames stage)."),
    features: Path = typer.Option(..., help="Feature cache (features stage)."),
    adapters: Path = typer.Option(..., help="Trained adapters (train stage)."),
    out: Path = typer.Option(..., help="The HTML page to write."),
) -> None:
    params = load_params_or_exit()
    device = str(resolve_device("auto"))
    path = write_report(
        out,
        metrics_dir,
        frames,
        features,
        adapters,
        params,
        num_queries=params.report.queries,
        seed=params.report.seed,
        strip_frames=params.report.strip_frames,
        device=device,
    )
    print(f"report: {path} ({path.stat().st_size / 1024:.0f} KiB)")
    print(f"open it: xdg-open {path}  (or {path.resolve().as_uri()})")


if __name__ == "__main__":
    run_stage(main)
