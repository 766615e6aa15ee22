"""Stage `train`: DiscoVLA adapters on the frozen backbone, from the feature cache.

Runs on one device (`python stages/train.py`) or distributed (`torchrun --nproc_per_node N stages/train.py`).
A rerun after a crash resumes from the last epoch checkpoint of an identical run (same config, input
bytes, frozen weights and training code) under .work/checkpoints/ (or $DISCOVLA_CHECKPOINTS).
"""

from __future__ import annotations

import os

from discovla.backbone import load_backbone
from discovla.config import load_params_or_exit
from discovla.errors import run_stage
from discovla.evaluate import validation_monitor
from discovla.features import load_features
from discovla.io import write_json
from discovla.pipeline import train_config
from discovla.train import checkpoint_root, save_adapters, train, write_curve


def main() -> None:
    params = load_params_or_exit()
    features = load_features("data/features")
    cfg = train_config(params, num_frames=features.pixels.shape[1])
    backbone = load_backbone(
        params.model.backbone, params.model.pretrained, context_length=params.model.context_length
    )

    ev = params.evaluate
    validate = validation_monitor(features, ev.batch_size, ev.chunk_size)
    model, record = train(backbone.model, features, cfg, checkpoint_root(), on_epoch=validate)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    info = {
        "backbone": params.model.backbone,
        "pretrained": params.model.pretrained,
        "context_length": params.model.context_length,
        "epochs": cfg.epochs,
        "trainable_parameters": record["trainable_parameters"],
    }
    save_adapters("models/discovla", model, info)
    write_curve("metrics/train_curve.csv", record["curve"])
    last = record["epochs"][-1]
    write_json(
        "metrics/train.json",
        {
            "trainable_parameters": record["trainable_parameters"],
            "checkpoint_key": record["checkpoint_key"],
            "epochs": len(record["epochs"]),
            "seconds": round(record["seconds"], 1),
            "samples_per_s": round(
                sum(e["samples_per_s"] for e in record["epochs"]) / len(record["epochs"]), 2
            ),
            "final": {
                k: round(v, 5) for k, v in last.items() if k not in ("epoch", "seconds", "samples_per_s")
            },
            "per_epoch": [{k: round(v, 5) for k, v in e.items()} for e in record["epochs"]],
        },
    )
    print(f"trainable parameters: {record['trainable_parameters']:,}; adapters in models/discovla/")


if __name__ == "__main__":
    run_stage(main)
