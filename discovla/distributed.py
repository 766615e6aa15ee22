"""Data-parallel training across processes launched by ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK).

Each rank takes a slice of every global batch; features are all-gathered *with* gradient so the
contrastive losses see the global batch (the reference code gathers without gradient), and gradients are
averaged over ranks before the optimiser step, so every rank takes the single-process step. Rank 0
decides what is shared (which checkpoint a run resumes from) and broadcasts it with the state itself
(:func:`broadcast_json`, :func:`broadcast_tensors`); :func:`check_replicas` verifies that the ranks agree,
and :func:`all_ranks_finished` is the last collective before rank 0 writes the outputs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from discovla.errors import DiscoVLAError
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


class ReplicaMismatchError(DiscoVLAError, RuntimeError):
    """Ranks of one data-parallel run hold different trainable state (a bug or a broken resume)."""


def _comm_device() -> torch.device:
    """Where collective tensors live: the current CUDA device on nccl, the CPU on gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_json(obj: Any, d: Dist) -> Any:
    """Rank 0's JSON-serialisable ``obj`` on every rank (bytes of its JSON; nothing is pickled)."""
    if d.world == 1:
        return obj
    device = _comm_device()
    data = json.dumps(obj).encode() if d.main else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, 0)
    buf = (
        torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
        if d.main
        else torch.empty(int(size), dtype=torch.uint8, device=device)
    )
    if int(size):
        dist.broadcast(buf, 0)
    return json.loads(buf.cpu().numpy().tobytes().decode()) if not d.main else obj


def broadcast_tensors(tensors: dict[str, torch.Tensor] | None, d: Dist) -> dict[str, torch.Tensor]:
    """Rank 0's named float32 tensors on every rank (names and shapes as JSON, the values as one flat
    buffer); returned on the CPU. Other ranks pass None."""
    if d.world == 1:
        assert tensors is not None
        return tensors
    spec = broadcast_json([[k, list(v.shape)] for k, v in tensors.items()] if d.main else None, d)
    device = _comm_device()
    if d.main:
        assert tensors is not None
        flat = torch.cat([tensors[k].float().reshape(-1) for k, _ in spec]).to(device)
    else:
        flat = torch.empty(sum(math.prod(s) for _, s in spec), dtype=torch.float32, device=device)
    dist.broadcast(flat, 0)
    out, at, flat = {}, 0, flat.cpu()
    for k, shape in spec:
        n = math.prod(shape)
        out[k] = flat[at : at + n].reshape(shape).clone()
        at += n
    return out


def check_replicas(values: torch.Tensor, d: Dist, what: str) -> None:
    """Raise :class:`ReplicaMismatchError` on every rank unless every rank passed exactly rank 0's
    ``values`` (a small float64 vector: counters and checksums of the trainable state)."""
    if d.world == 1:
        return
    mine = values.detach().to(_comm_device(), torch.float64).reshape(-1)
    parts = [torch.empty_like(mine) for _ in range(d.world)]
    dist.all_gather(parts, mine)
    differ = [r for r, v in enumerate(parts) if not torch.equal(v, parts[0])]
    if differ:
        raise ReplicaMismatchError(
            f"{what}: rank(s) {', '.join(map(str, differ))} hold different trainable state than rank 0"
        )


def all_ranks_finished() -> None:
    """A final collective before rank 0 writes a stage's outputs: it returns only once every rank of the
    process group reached it (a rank that died makes it raise, or torchrun ends the job), so a rank's
    failure never leaves final outputs written. A no-op outside ``torchrun``."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    done = torch.ones(1, dtype=torch.int64, device=_comm_device())
    dist.all_reduce(done)
    if int(done) != dist.get_world_size():
        raise ReplicaMismatchError(f"only {int(done)} of {dist.get_world_size()} ranks finished training")
