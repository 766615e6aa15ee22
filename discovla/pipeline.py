"""Glue between ``params.yaml`` sections and the library: configs for training and evaluation."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from discovla.config import Params
from discovla.model import DiscoVLAConfig
from discovla.train import TrainConfig


def model_config(p: Params, num_frames: int) -> DiscoVLAConfig:
    """The model config from params ``lora``, ``fusion`` and ``temporal``, with F taken from the feature cache
    (what
    training really sees)."""
    f = p.fusion
    return DiscoVLAConfig(
        lora_rank=p.lora.rank,
        fusion=f.enabled,
        vision_layers=f.vision_layers,
        text_layers=f.text_layers,
        adapter_dim=f.adapter_dim,
        temporal_position=f.temporal_position,
        num_frames=num_frames,
        temporal_module=p.temporal.module,
        temporal_width=p.temporal.width,
        temporal_layers=p.temporal.layers,
        temporal_trends=p.temporal.trends,
    )


def train_config(
    p: Params, num_frames: int, model_overrides: dict[str, Any] | None = None, **overrides: Any
) -> TrainConfig:
    """The training config from params (``overrides`` replace TrainConfig fields, ``model_overrides``
    DiscoVLAConfig fields). With alpha = beta = 0 the pseudo captions are never encoded, so the text-side
    IVFusion adapters could never receive a gradient: they are left out (``text_layers = 0``) rather than
    trained and counted as dead weight."""
    t = p.train
    cfg = dict(
        seed=t.seed,
        epochs=t.epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        weight_decay=t.weight_decay,
        betas=(t.beta1, t.beta2),
        eps=t.eps,
        warmup=t.warmup,
        grad_clip=t.grad_clip,
        sampling=t.sampling,
        augment=t.augment,
        alpha=p.fusion.alpha,
        beta=p.fusion.beta,
        detach_teacher=p.fusion.detach_teacher,
        distill_scale=p.fusion.distill_scale,
        order_weight=p.temporal.order_weight,
        shuffled=p.temporal.shuffled,
        device=t.device,
        precision=t.precision,
        workers=t.workers,
        activation_checkpointing=t.activation_checkpointing,
    )
    cfg.update(overrides)
    model = replace(model_config(p, num_frames), **(model_overrides or {}))
    if cfg["alpha"] == 0 and cfg["beta"] == 0:
        model = replace(model, text_layers=0)
    return TrainConfig(**cfg, model=model)


def train_summary(record: dict[str, Any]) -> dict[str, Any]:
    """``metrics/train.json`` from a training record: the last epoch's losses and validation recall, the
    per-epoch table, parameters, speed and the checkpoint key."""
    epochs = record["epochs"]
    last = epochs[-1]
    return {
        "trainable_parameters": record["trainable_parameters"],
        "checkpoint_key": record["checkpoint_key"],
        "epochs": len(epochs),
        "seconds": round(record["seconds"], 1),
        "samples_per_s": round(sum(e["samples_per_s"] for e in epochs) / len(epochs), 2),
        "final": {k: round(v, 5) for k, v in last.items() if k not in ("epoch", "seconds", "samples_per_s")},
        "per_epoch": [{k: round(v, 5) for k, v in e.items()} for e in epochs],
    }
