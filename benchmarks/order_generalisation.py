"""Analysis: does an order-aware row learn order, or memorise it? The reversal test on train and test.

    python benchmarks/order_generalisation.py --variant order@e8 --seeds 1,2,3

For each seed, the finished run of ablation row ``--variant`` (found by its checkpoint key under the
checkpoint root, ``$DISCOVLA_CHECKPOINTS`` or ``.work/checkpoints``; train it first with ``discovla
ablate``) is evaluated on the train split and on the test split: the reversal test over all captions and
over the order-stating ones, and order twins (retrieval recall is left out: the splits' galleries differ in
size). A train number well above the test one says that the order the run learned is specific to its
training videos and captions. Evaluation only: nothing is trained. Writes
``benchmarks/results/order_generalisation.json``.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import typer

from discovla.ablation import finished_run
from discovla.artifacts.adapters import checkpoint_root
from discovla.artifacts.features import Features, load_features
from discovla.backbone import load_backbone
from discovla.config import Params, load_params
from discovla.evaluate import evaluate_model
from discovla.io import write_json

SPLITS = ("train", "test")


def _numbers(m: dict[str, Any]) -> dict[str, Any]:
    rev = m.get("reversal") or {}
    return {
        "reversal_acc": rev.get("all"),
        "reversal_ordered_acc": rev.get("ordered"),
        "order_twin_acc": m.get("twins", {}).get("order"),
        "captions": m["t2v"]["queries"],
    }


def evaluate_runs(
    params: Params,
    features: Features,
    clip_factory: Callable[[], torch.nn.Module],
    variant: str,
    seeds: list[int],
    ckpt_root: Path,
    batch_size: int = 256,
) -> list[dict[str, Any]]:
    """Per seed: the finished run's checkpoint key and its order numbers on each split of ``SPLITS``."""
    runs = []
    for seed in seeds:
        model, key = finished_run(params, features, clip_factory(), variant, seed, ckpt_root)
        row: dict[str, Any] = {"seed": seed, "checkpoint_key": key}
        for split in SPLITS:
            res = evaluate_model(model, features, split, batch_size, params.evaluate.chunk_size, dsl=False)
            row[split] = _numbers(res)
            print(f"{variant} seed {seed} {split}: {row[split]}", file=sys.stderr, flush=True)
        runs.append(row)
    return runs


def main(
    variant: str = typer.Option("order@e8", help="Ablation row (discovla ablate --variants)."),
    seeds: str = typer.Option("1,2,3", help="Comma-separated seeds; each must have finished training."),
    params_file: Path = typer.Option(Path("params.yaml"), help="Parameters the runs were trained with."),
    features_dir: Path = typer.Option(Path("data/features"), help="Feature cache the runs were trained on."),
    batch_size: int = typer.Option(256, help="Frames per encoding batch."),
    out: Path = typer.Option(Path("benchmarks/results/order_generalisation.json"), help="Results JSON."),
) -> None:
    """Reversal test and order twins of finished ablation runs on the train and test splits."""
    params = load_params(params_file)
    features = load_features(features_dir)
    m = params.model

    def clip_factory() -> torch.nn.Module:
        return load_backbone(m.backbone, m.pretrained, context_length=m.context_length).model

    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    runs = evaluate_runs(params, features, clip_factory, variant, seed_list, checkpoint_root(), batch_size)
    mean = {
        split: {
            k: round(statistics.fmean(vals), 2)
            for k in runs[0][split]
            if (vals := [r[split][k] for r in runs if r[split][k] is not None])
        }
        for split in SPLITS
    }
    write_json(
        out,
        {
            "command": "python benchmarks/order_generalisation.py " + " ".join(sys.argv[1:]),
            "variant": variant,
            "params_file": str(params_file),
            "threads": torch.get_num_threads(),
            "runs": runs,
            "mean": mean,
        },
    )
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    typer.run(main)
