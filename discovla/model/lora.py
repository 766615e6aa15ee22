"""LoRA on the fused q/k/v in-projection of open_clip's attention layers.

open_clip's :class:`~open_clip.transformer.ResidualAttentionBlock` holds an ``nn.MultiheadAttention``
whose forward reads ``in_proj_weight`` and ``out_proj.weight`` directly, so wrapping Linear modules
would silently do nothing. :func:`install_lora` therefore replaces every such module with
:class:`LoRAAttention`, a drop-in module with the same call signature as open_clip uses
(``attn(q, k, v, need_weights=False, attn_mask=mask) -> (out, None)``). It *shares* the frozen
``in_proj_weight`` / ``in_proj_bias`` / ``out_proj`` parameters (same names, so the CLIP state dict keys
are unchanged) and adds

    qkv = x W_in^T + b_in + (x A^T) B^T,    A in R^{r x D} (Kaiming-uniform, a = sqrt(5)), B in R^{3D x r} (0)

with no scaling and no dropout. Attention runs through ``F.scaled_dot_product_attention``. After
installation, plain ``clip.encode_image`` / ``clip.encode_text`` compute the LoRA-adapted features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LoRAAttention(nn.Module):
    """Multi-head self-attention with a LoRA update on the fused q/k/v in-projection.

    Built from an existing ``nn.MultiheadAttention`` (``from_mha``); the frozen projection parameters are the
    very same ``Parameter`` objects, not copies. ``rank == 0`` gives the frozen attention unchanged.
    """

    def __init__(self, mha: nn.MultiheadAttention, rank: int) -> None:
        super().__init__()
        _check_supported(mha)
        if rank < 0:
            raise ValueError(f"LoRA rank must be >= 0, got {rank}")
        self.embed_dim = mha.embed_dim
        self.num_heads = mha.num_heads
        self.head_dim = mha.embed_dim // mha.num_heads
        self.batch_first = mha.batch_first
        self.rank = rank
        # Shared (frozen) parameters of the original module, registered under the original names.
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj
        if rank > 0:
            w = mha.in_proj_weight
            self.lora_A = nn.Parameter(torch.empty(rank, self.embed_dim, dtype=w.dtype, device=w.device))
            self.lora_B = nn.Parameter(torch.zeros(3 * self.embed_dim, rank, dtype=w.dtype, device=w.device))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        else:
            self.register_parameter("lora_A", None)
            self.register_parameter("lora_B", None)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, rank={self.rank}"

    # ---- projections -------------------------------------------------------------------------------
    def qkv(self, x: Tensor) -> Tensor:
        """Fused q/k/v projection with the LoRA update: ``[..., D] -> [..., 3D]``."""
        y = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        if self.lora_A is not None:
            y = y + F.linear(F.linear(x, self.lora_A), self.lora_B)
        return y

    def _proj_part(self, x: Tensor, part: int) -> Tensor:
        """One of q (0), k (1), v (2) with its LoRA slice (used only for cross-attention inputs)."""
        d = self.embed_dim
        sl = slice(part * d, (part + 1) * d)
        bias = self.in_proj_bias[sl] if self.in_proj_bias is not None else None
        y = F.linear(x, self.in_proj_weight[sl], bias)
        if self.lora_A is not None:
            y = y + F.linear(F.linear(x, self.lora_A), self.lora_B[sl])
        return y

    def split_heads(self, t: Tensor) -> Tensor:
        """``[N, L, D] -> [N, heads, L, head_dim]``."""
        n, length, _ = t.shape
        return t.view(n, length, self.num_heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, t: Tensor) -> Tensor:
        """``[N, heads, L, head_dim] -> [N, L, D]``."""
        n, _, length, _ = t.shape
        return t.transpose(1, 2).reshape(n, length, self.embed_dim)

    def project_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention q, k, v of a batch-first ``[N, L, D]`` input, each ``[N, heads, L, head_dim]``."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.split_heads(q), self.split_heads(k), self.split_heads(v)

    # ---- forward (nn.MultiheadAttention call signature, as open_clip uses it) -----------------------
    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, None]:
        if need_weights:
            raise NotImplementedError(
                "LoRAAttention does not return attention weights; call need_weights=False"
            )
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, lq, _ = query.shape
        lk = key.shape[1]
        if query is key and key is value:
            q, k, v = self.project_heads(query)
        else:
            q = self.split_heads(self._proj_part(query, 0))
            k = self.split_heads(self._proj_part(key, 1))
            v = self.split_heads(self._proj_part(value, 2))
        mask = sdpa_mask(attn_mask, key_padding_mask, n, self.num_heads, lq, lk, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None)
        out = self.out_proj(self.merge_heads(out))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


def sdpa_mask(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    n: int,
    heads: int,
    lq: int,
    lk: int,
    dtype: torch.dtype,
) -> Tensor | None:
    """Convert ``nn.MultiheadAttention`` mask conventions to one additive SDPA mask.

    MHA: a bool mask is True where attention is NOT allowed; a float mask is added to the logits; a 3-D
    mask is ``[N * heads, Lq, Lk]``. ``key_padding_mask`` is ``[N, Lk]`` (bool True = ignore, or float
    additive). Returns None, or a float mask broadcastable to ``[N, heads, Lq, Lk]``.
    """
    mask = None
    if attn_mask is not None:
        if attn_mask.dim() == 3:
            attn_mask = attn_mask.view(n, heads, lq, lk)
        elif attn_mask.dim() != 2:
            raise ValueError(f"attn_mask must be 2-D or 3-D, got shape {tuple(attn_mask.shape)}")
        mask = _additive(attn_mask, dtype)
    if key_padding_mask is not None:
        kpm = _additive(key_padding_mask, dtype).view(n, 1, 1, lk)
        mask = kpm if mask is None else mask + kpm
    return mask


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def _check_supported(mha: nn.Module) -> None:
    if not isinstance(mha, nn.MultiheadAttention):
        raise TypeError(
            f"LoRA needs nn.MultiheadAttention (open_clip's default ResidualAttentionBlock), got "
            f"{type(mha).__name__}; custom attention blocks (qk_norm, scaled cosine, ...) are not supported"
        )
    if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
        raise TypeError("LoRA needs a fused in_proj_weight (kdim == vdim == embed_dim)")
    if mha.bias_k is not None or mha.add_zero_attn:
        raise TypeError("LoRA does not support nn.MultiheadAttention with add_bias_kv or add_zero_attn")


def install_lora(blocks: nn.ModuleList, rank: int) -> list[LoRAAttention]:
    """Replace ``block.attn`` of every block in ``blocks`` by a :class:`LoRAAttention` (in place).

    Blocks already converted are left as they are (their rank must match). Returns the attention modules.
    """
    out = []
    for i, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if isinstance(attn, LoRAAttention):
            if attn.rank != rank:
                raise ValueError(f"block {i} already has LoRA rank {attn.rank}, asked for {rank}")
        else:
            attn = LoRAAttention(attn, rank)
            block.attn = attn
        out.append(attn)
    return out
