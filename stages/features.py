"""Stage ``features``: decode the sampled frames once, run the frozen backbone once, cache it in Parquet.

Reads params ``data``, ``model`` and ``features``, the frames store, the pseudo captions and the dataset's
real captions (and ``twins.csv`` when the dataset has one).
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from discovla.backbone import load_backbone
from discovla.config import load_params_or_exit
from discovla.data.registry import load_dataset
from discovla.errors import run_stage
from discovla.featurize import build_features
from discovla.runtime import resolve_device


def main(
    frames: Path = typer.Option(..., help="Frames store (frames stage)."),
    captions: Path = typer.Option(..., help="Pseudo captions table (captions stage)."),
    out: Path = typer.Option(..., help="Directory for the feature cache."),
) -> None:
    params = load_params_or_exit()
    start = time.perf_counter()
    m = params.model
    device = resolve_device("auto")
    backbone = load_backbone(m.backbone, m.pretrained, device=device, context_length=m.context_length)
    dataset = load_dataset(params.data.dataset, params.data.root)
    meta = build_features(
        backbone,
        frames_dir=frames,
        captions_path=captions,
        dataset_captions=dataset.captions,
        out_dir=out,
        batch_size=params.features.batch_size,
        twins_csv=Path(params.data.root) / "twins.csv",
    )
    print(
        f"features: {meta['videos']} videos, {meta['frames']} frames, {meta['captions']} captions "
        f"in {time.perf_counter() - start:.1f} s -> {out}"
    )


if __name__ == "__main__":
    run_stage(main)
