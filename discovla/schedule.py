"""The learning-rate schedule of every training loop: linear warm-up, then cosine decay to zero.

Built from torch's own schedulers (``LinearLR`` then ``CosineAnnealingLR`` under ``SequentialLR``): step
``s < W`` runs at ``lr * (s + 1) / W``, step ``s >= W`` at ``lr * (1 + cos(pi (s - W) / (T - W))) / 2``.
Call ``scheduler.step()`` after every ``optimizer.step()``.
"""

from __future__ import annotations

import warnings

import torch
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


def warmup_steps(fraction: float, total: int) -> int:
    """Warm-up length: ``fraction`` of ``total`` steps, rounded, at least one step."""
    return max(1, round(fraction * total))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: float, total: int) -> LRScheduler:
    """Linear warm-up over ``warmup_steps(warmup, total)`` steps, then cosine decay to zero at ``total``."""
    if total < 1:
        raise ValueError(f"total steps must be >= 1, got {total}")
    warm = min(warmup_steps(warmup, total), total)
    first = (
        LinearLR(optimizer, start_factor=1.0 / warm, end_factor=1.0, total_iters=warm - 1)
        if warm > 1
        else ConstantLR(optimizer, factor=1.0, total_iters=0)
    )
    decay = CosineAnnealingLR(optimizer, T_max=max(1, total - warm), eta_min=0.0)
    with warnings.catch_warnings():  # SequentialLR steps its first scheduler at construction
        warnings.simplefilter("ignore", UserWarning)
        return SequentialLR(optimizer, [first, decay], milestones=[warm])


def fast_forward(scheduler: LRScheduler, steps: int) -> None:
    """Advance ``scheduler`` by ``steps`` without optimiser steps: where a resumed run continues."""
    with warnings.catch_warnings():  # torch warns about scheduler steps before any optimiser step
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):
            scheduler.step()
