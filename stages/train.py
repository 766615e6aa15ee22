"""Stage ``train``: DiscoVLA adapters on the frozen backbone, from the feature cache.

Runs on one device (``python stages/train.py ...``) or distributed (``torchrun --nproc_per_node N
stages/train.py ...``). A rerun after a crash resumes from the last epoch checkpoint of an identical run
(same config, input bytes, frozen weights and training code) under ``.work/checkpoints/`` (or
``$DISCOVLA_CHECKPOINTS``); under torchrun rank 0's checkpoint decides and is broadcast to every rank, and
the outputs are written by rank 0 only after every rank has finished. Reads params ``model``, ``lora``,
``fusion``, ``temporal``, ``train`` and ``evaluate.batch_size`` / ``evaluate.chunk_size`` (per-epoch
validation recall, monitoring only), and ``data.dataset`` (named on the model card). Writes the adapters
with their model card (``README.md``, :mod:`discovla.artifacts.card`).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from discovla.artifacts.adapters import checkpoint_root, save_adapters
from discovla.artifacts.card import card_metadata, write_card
from discovla.artifacts.features import load_features
from discovla.artifacts.metrics import write_metrics, write_train_curve
from discovla.backbone import load_backbone
from discovla.config import load_params_or_exit
from discovla.distributed import all_ranks_finished
from discovla.errors import run_stage
from discovla.evaluate import validation_monitor
from discovla.pipeline import train_config, train_summary
from discovla.provenance import tensors_digest
from discovla.train import train


def main(
    features: Path = typer.Option(..., help="Feature cache (features stage)."),
    out: Path = typer.Option(..., help="Directory for the trained adapters."),
    metrics: Path = typer.Option(..., help="Training metrics JSON."),
    curve: Path = typer.Option(..., help="Per-step loss curve CSV."),
    info: Path = typer.Option(..., help="Run information JSON: timings, speeds, device (not a DVC metric)."),
) -> None:
    params = load_params_or_exit()
    cache = load_features(features)
    cfg = train_config(params, num_frames=cache.pixels.shape[1])
    m = params.model
    backbone = load_backbone(m.backbone, m.pretrained, context_length=m.context_length)
    validate = validation_monitor(
        cache, params.evaluate.batch_size, params.evaluate.chunk_size, params.train.workers
    )
    base_digest = tensors_digest(sorted(backbone.model.state_dict().items()))  # before LoRA goes in
    model, record = train(backbone.model, cache, cfg, checkpoint_root(), on_epoch=validate)
    all_ranks_finished()  # rank 0 writes only once every rank has finished: a failed rank leaves no outputs
    if int(os.environ.get("RANK", "0")) != 0:
        return
    about = {
        "backbone": m.backbone,
        "pretrained": m.pretrained,
        "context_length": m.context_length,
        "epochs": cfg.epochs,
        "trainable_parameters": record["trainable_parameters"],
    }
    save_adapters(out, model, about)
    summary = train_summary(record)
    card = card_metadata(
        backbone=m.backbone,
        pretrained=m.pretrained,
        base_weights_sha256=base_digest,
        context_length=m.context_length,
        dataset=params.data.dataset,
        params={
            "model": m.model_dump(),
            "lora": params.lora.model_dump(),
            "fusion": params.fusion.model_dump(),
            "temporal": params.temporal.model_dump(),
            "train": params.train.model_dump(),
        },
        metrics=summary["final"],
        checkpoint_key=record["checkpoint_key"],
        trainable_parameters=record["trainable_parameters"],
    )
    write_card(out, card)  # README.md: the model card, so the directory can be shared alone
    write_train_curve(curve, record["curve"])
    write_metrics(metrics, info, summary)
    print(f"trainable parameters: {record['trainable_parameters']:,}; adapters in {out}/")


if __name__ == "__main__":
    run_stage(main)
