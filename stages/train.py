"""Stage `train`: DiscoVLA adapters on the frozen backbone, from the feature cache.

Runs on one device (`python stages/train.py`) or distributed (`torchrun --nproc_per_node N stages/train.py`).
A rerun after a crash resumes from the last epoch checkpoint under .work/checkpoints/.
"""

from __future__ import annotations

import os

from discovla.backbone import load_backbone
from discovla.config import load_params_or_exit
from discovla.evaluate import evaluate_model
from discovla.features import load_features
from discovla.io import write_json
from discovla.pipeline import train_config
from discovla.train import save_adapters, train, write_curve

CHECKPOINTS = ".work/checkpoints"


def main() -> None:
    params = load_params_or_exit()
    features = load_features("data/features")
    cfg = train_config(params, num_frames=features.pixels.shape[1])
    backbone = load_backbone(
        params.model.backbone, params.model.pretrained, context_length=params.model.context_length
    )

    ev = params.evaluate

    def validate(epoch: int, model) -> dict[str, float]:  # noqa: ANN001 - monitoring only, never selection
        if len(features.split_videos("val")) == 0:
            return {}
        device = next(iter(model.trainable_parameters())).device
        m = evaluate_model(
            model, features, "val", ev.batch_size, ev.chunk_size, dsl=False, device=str(device)
        )
        return {"val_t2v_R@1": m["t2v"]["R@1"], "val_v2t_R@1": m["v2t"]["R@1"]}

    model, record = train(backbone.model, features, cfg, CHECKPOINTS, on_epoch=validate)
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
    main()
