"""The copies of a video that L_order (:func:`discovla.losses.order_loss`) contrasts it with: its frames in
other orders (the time reversal, optionally one shuffle), as video embeddings of the model being trained.

Part of the order-aware extension beyond the paper (``temporal`` in params.yaml, docs/method.md).
"""

from __future__ import annotations

import torch

from discovla.distributed import Dist, gather_with_grad
from discovla.model import DiscoVLA


def order_perms(seed: int, shuffled: bool, step: int, num_frames: int) -> list[torch.Tensor]:
    """The frame orders of the copies that L_order contrasts with each video at ``step``: the time reversal,
    and with ``shuffled`` one shuffle that is neither the identity nor the reversal, drawn from
    (seed, step) so that a resumed run draws the same."""
    perms = [torch.arange(num_frames - 1, -1, -1)]
    if shuffled:
        if num_frames < 3:
            raise ValueError(
                f"temporal.shuffled needs at least 3 frames per video, the cache has {num_frames}"
            )
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + step)
        while True:
            p = torch.randperm(num_frames, generator=gen)
            if not (torch.equal(p, perms[0]) or torch.equal(p, torch.arange(num_frames))):
                break
        perms.append(p)
    return perms


def order_copies(
    model: DiscoVLA,
    pixels: torch.Tensor,
    frame_feats: torch.Tensor,
    perms: list[torch.Tensor],
    d: Dist,
    bf16: bool = False,
) -> torch.Tensor:
    """``[B, K, E]``: normalised video embeddings of every video of the (gathered) batch with its frames in
    each order of ``perms``. Without frame positions in the video-level attention the encoder is
    equivariant to frame order (tested), so a copy is the frame features permuted; with
    ``fusion.temporal_position`` the permuted pixels are encoded again (under bf16 autocast with ``bf16``, as
    the step's own encoding) and gathered."""
    copies = []
    for perm in perms:
        if model.cfg.temporal_position:
            with torch.autocast(device_type=pixels.device.type, dtype=torch.bfloat16, enabled=bf16):
                feats = model.encode_frames(pixels[:, perm.to(pixels.device)])
            feats = gather_with_grad(feats.float(), d)
        else:
            feats = frame_feats[:, perm.to(frame_feats.device)]
        copies.append(model.video_embedding(feats))
    return torch.stack(copies, dim=1)
