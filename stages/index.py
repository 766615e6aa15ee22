"""Stage ``index``: the test split embedded with the trained adapters (``discovla search``'s default index).

Reads params ``data`` (where the dataset's video files are, so that search can show their paths), the
feature cache (the split's stored pixels: nothing is decoded again) and the trained adapters;
``engine.index``: ``ray`` embeds on an actor pool of retrievers on Ray, with resumable parts
under ``--work``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from discovla.config import load_params_or_exit
from discovla.errors import run_stage
from discovla.split_indexing import build_split_index, dataset_video_paths


def main(
    features: Path = typer.Option(..., help="Feature cache (features stage)."),
    adapters: Path = typer.Option(..., help="Trained adapters (train stage)."),
    out: Path = typer.Option(
        ..., help="Index directory to write (discovla search's default: data/index/test)."
    ),
    split: str = typer.Option("test", help="Split of the feature cache to index."),
    work: Path = typer.Option(
        Path(".work/index"),
        help="Scratch directory of the ray engine's resumable parts (removed on success).",
    ),
) -> None:
    params = load_params_or_exit()
    engine = params.engine
    paths = dataset_video_paths(params.data.dataset, params.data.root)
    index = build_split_index(features, adapters, split, out, paths=paths, engine=engine, work_dir=work)
    with_paths = sum(1 for p in index.paths if p)
    print(f"indexed {len(index)} {split} videos ({with_paths} with their file) in {out}/")


if __name__ == "__main__":
    run_stage(main)
