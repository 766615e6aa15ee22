"""Stage `features`: decode frames once, run the frozen backbone once, cache everything in Parquet."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from discovla.backbone import load_backbone
from discovla.config import load_params_or_exit
from discovla.data import load_dataset
from discovla.errors import run_stage
from discovla.features import build_features


def main() -> None:
    params = load_params_or_exit()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    backbone = load_backbone(
        params.model.backbone,
        params.model.pretrained,
        device=device,
        context_length=params.model.context_length,
    )
    dataset = load_dataset(params.data.dataset, params.data.root)
    meta = build_features(
        backbone,
        frames_dir="data/frames",
        captions_path="data/captions.parquet",
        dataset_captions=dataset.captions,
        out_dir="data/features",
        batch_size=params.features.batch_size,
        twins_csv=Path(params.data.root) / "twins.csv",
    )
    print(
        f"features: {meta['videos']} videos, {meta['frames']} frames, {meta['captions']} captions "
        f"in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    run_stage(main)
