"""An order-aware extension beyond the paper: a light temporal module over a video's frame features.

DiscoVLA's video feature is the mean of its frames' features, and its video-level attention sees the set of
all frames' tokens: a video and its time reversal embed alike. :class:`TemporalModule` gives the frame
features a notion of position before the mean (params ``temporal.module``, ``temporal.width``,
``temporal.layers``)::

    z = LN(x W_down) + pos                   # [B, F, width], pos: one learned vector per frame position
    z = z + Attn(LN(z)); z = z + MLP(LN(z))  # ``layers`` pre-norm blocks over the F frames
    out = x + |x| (z W_up)                   # W_up, b_up zero-initialised

With ``W_up = 0`` the output equals the input exactly, so at step 0 an order-aware model is DiscoVLA. The
residual is scaled by each frame feature's own norm: the video embedding normalises every frame first, so
what counts is the residual's size relative to the frame (projected CLIP features have norms of about 8 for
the tiny CLIP; an unscaled residual would need to grow 8x as large to change the same angle). Only the
video-level path uses it: PImgAlign keeps matching pseudo captions with the frame features themselves.

:class:`TrendPooling` (``temporal.trends``) changes the pooling instead: beside the mean of the normalised
frame features, their time trends (slope, curvature, ...: orthonormal polynomials over frame positions), each
through a zero-initialised linear map. The slope is antisymmetric in time by construction, so the time
reversal of a video moves its embedding the opposite way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Block(nn.Module):
    """A pre-norm transformer block over the frame axis (``[B, F, W]``), MLP ratio 2, GELU."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, z: Tensor) -> Tensor:
        h = self.ln_1(z)
        z = z + self.attn(h, h, h, need_weights=False)[0]
        return z + self.mlp(self.ln_2(z))


class TemporalModule(nn.Module):
    """``[B, F, E] -> [B, F, E]``: frame features plus a zero-initialised residual that knows frame order."""

    def __init__(self, dim: int, num_frames: int, width: int = 64, layers: int = 1) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.down = nn.Linear(dim, width)
        self.ln_in = nn.LayerNorm(width)
        # positions at the scale of the normalised content: order is visible to the block from step one
        self.pos = nn.Parameter(torch.randn(num_frames, width))
        heads = max(1, width // 32)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.up = nn.Linear(width, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.num_frames:
            raise ValueError(
                f"the temporal module was built for {self.num_frames} frames per video, got frame features "
                f"of shape {tuple(x.shape)} (train and evaluate with the same frames.num_frames)"
            )
        z = self.ln_in(self.down(x)) + self.pos.to(x.dtype)
        for block in self.blocks:
            z = block(z)
        return x + x.norm(dim=-1, keepdim=True) * self.up(z)


def trend_basis(num_frames: int, trends: int) -> Tensor:
    """``[trends, F]``: discrete orthonormal polynomials of degree 1..``trends`` over F evenly spaced frame
    positions (orthogonal to the constant, i.e. to the mean), each with a positive last entry. Degree k has
    parity (-1)^k under time reversal: the slope (k = 1) flips sign, the curvature (k = 2) does not."""
    if not 0 < trends < num_frames:
        raise ValueError(f"temporal.trends must be in 1..F-1 = {num_frames - 1}, got {trends}")
    t = torch.linspace(-1.0, 1.0, num_frames, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.stack([t**k for k in range(trends + 1)], dim=1))
    basis = q[:, 1:].t()
    basis = basis * torch.sign(basis[:, -1:])
    return basis.float()


class TrendPooling(nn.Module):
    """``[B, F, E] -> [B, E]``: the video embedding with time trends beside the mean of the frames::

        n_f = normalise(x_f)
        v = normalise(mean_f n_f + sum_k W_k (sum_f P_kf n_f))   # P: trend_basis; W_k zero-initialised

    With ``W = 0`` this is the paper's video embedding exactly. The slope term is antisymmetric in time, so
    a time-reversed video moves it by minus the same amount: whatever it learns about one direction of
    change, it knows about the other (the temporal module has to learn that from data)."""

    def __init__(self, dim: int, num_frames: int, trends: int = 1) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.register_buffer("basis", trend_basis(num_frames, trends), persistent=False)
        self.maps = nn.Parameter(torch.zeros(trends, dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.num_frames:
            raise ValueError(
                f"trend pooling was built for {self.num_frames} frames per video, got frame features "
                f"of shape {tuple(x.shape)} (train and evaluate with the same frames.num_frames)"
            )
        n = F.normalize(x, dim=-1)
        trends = torch.einsum("kf,bfe->bke", self.basis.to(n.dtype), n)
        moved = torch.einsum("bke,kde->bd", trends, self.maps.to(n.dtype))
        return F.normalize(n.mean(dim=1) + moved, dim=-1)
