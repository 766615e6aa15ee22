"""Data-parallel training across processes launched by ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK).

Each rank takes a slice of every global batch; features are all-gathered *with* gradient so the
contrastive losses see the global batch (the reference code gathers without gradient), and gradients are
averaged over ranks before the optimiser step, so every rank takes the single-process step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from discovla.runtime import resolve_device


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> tuple[Dist, torch.device]:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (torchrun), resolve ``device`` for this rank (``auto``/``cuda``
    -> ``cuda:LOCAL_RANK`` when CUDA is present) and, when WORLD_SIZE > 1, init the process group with the
    backend of the resolved device (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local if world > 1 else 0)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if world <= 1:
        return Dist(), resolved
    if not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return Dist(rank, world, local), resolved


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient of the gathered tensor and keeps this rank's
    slice (a reduce-scatter), on a contiguous gradient. ``torch.distributed.nn.all_gather`` on gloo gave
    gradients that did not match one process here (tests/test_train.py::test_torchrun_two_ranks_...)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
        ctx.rank, ctx.n = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n], None, None


def gather_with_grad(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping the gradient path to every rank's slice
    (equal local batch sizes on every rank)."""
    if d.world == 1:
        return x
    return _GatherWithGrad.apply(x, d.rank, d.world)


def average_gradients(params: list[torch.nn.Parameter], d: Dist) -> None:
    """Average gradients over ranks (what DDP would do), so every rank takes the same step.

    Every rank computes the same global-batch loss; the gathered-with-grad features route each rank's
    share of the gradient back to the rank that produced them (summed over the W identical losses), so
    the rank mean of the local gradients equals the single-process gradient of the global batch.
    """
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(d.world)
