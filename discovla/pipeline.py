"""Glue between ``params.yaml`` sections and the library: configs for training and evaluation."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from discovla.config import Params
from discovla.model import DiscoVLAConfig
from discovla.train import TrainConfig


def model_config(p: Params, num_frames: int) -> DiscoVLAConfig:
    """The model config from params, with F taken from the feature cache (what training really sees)."""
    return replace(DiscoVLAConfig.from_params(p), num_frames=num_frames)


def train_config(p: Params, num_frames: int, **overrides: Any) -> TrainConfig:
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
        alpha=p.fusion.alpha,
        beta=p.fusion.beta,
        detach_teacher=p.fusion.detach_teacher,
        distill_scale=p.fusion.distill_scale,
        device=t.device,
        precision=t.precision,
        model=model_config(p, num_frames),
    )
    cfg.update(overrides)
    return TrainConfig(**cfg)
