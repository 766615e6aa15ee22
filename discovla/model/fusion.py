"""IVFusion: image-level and video-level attention fused in the last blocks of a frozen CLIP tower.

For a batch of B videos x F frames (or F pseudo captions per video) flattened to ``x: [B*F, T, D]``,
:func:`fusion_block_forward` runs one open_clip ``ResidualAttentionBlock`` with its own modules
(``ln_1``, the LoRA attention's q/k/v/out projections, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``; no weight is
copied):

* every token keeps its ordinary within-sequence attention output ``O`` (image level);
* the pooling token of each sequence (the CLS token of a frame, the EOT token of a caption) also queries
  ALL (valid) tokens of all F sequences of its video: ``c^(2)`` (same projections, LoRA included);
* its output becomes ``c^(2) + Adapter(O[pool])`` with a zero-initialised bottleneck adapter
  (QuickGELU, initialised as in the authors' reference code: see :class:`Adapter`);
* then the block's residual and MLP as usual.

The video-level branch is one batched SDPA call: queries ``[B, heads, F, hd]`` over keys/values
``[B, heads, F*T, hd]``. Without a temporal key position the branch is a function of the *set* of frames,
so frame order does not change the mean-pooled video embedding (faithful to the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from torch import Tensor, nn

from discovla.model.lora import LoRAAttention, sdpa_mask


class Adapter(nn.Module):
    """Bottleneck adapter ``QuickGELU(o W_down + b_down) W_up + b_up``, as in the authors' reference code.

    ``QuickGELU(x) = x * sigmoid(1.702 x)`` (CLIP's activation, open_clip's module). Initialisation:
    ``W_down`` Xavier-uniform, ``b_down ~ N(0, 1e-6^2)``, ``W_up`` and ``b_up`` zero, so the adapter outputs
    exactly zero at init while its gradient w.r.t. ``W_up`` is not.
    """

    def __init__(self, dim: int, hidden: int, dtype: torch.dtype | None = None, device=None) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden, dtype=dtype, device=device)
        self.act = QuickGELU()
        self.up = nn.Linear(hidden, dim, dtype=dtype, device=device)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.normal_(self.down.bias, std=1e-6)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.act(self.down(x)))


class FusionLayer(nn.Module):
    """Trainable parts of one IVFusion block: the adapter and, optionally, a per-frame key position.

    ``key_pos`` (``[num_frames, D]``, zero-initialised) is added to the keys of the video-level branch only;
    it is an extension beyond the paper (``fusion.temporal_position``), absent by default.
    """

    def __init__(
        self,
        dim: int,
        adapter_dim: int,
        num_frames: int | None = None,
        dtype: torch.dtype | None = None,
        device=None,
    ) -> None:
        super().__init__()
        self.adapter = Adapter(dim, adapter_dim, dtype=dtype, device=device)
        if num_frames is not None:
            self.key_pos = nn.Parameter(torch.zeros(num_frames, dim, dtype=dtype, device=device))
        else:
            self.register_parameter("key_pos", None)


def fusion_block_forward(
    block: nn.Module,
    layer: FusionLayer,
    x: Tensor,
    num_frames: int,
    query_pos: int | Tensor,
    attn_mask: Tensor | None = None,
    key_valid: Tensor | None = None,
) -> Tensor:
    """One IVFusion block.

    Args:
        block: an open_clip ``ResidualAttentionBlock`` whose ``attn`` is a :class:`LoRAAttention`.
        layer: the block's adapter (and optional key position).
        x: ``[B*F, T, D]``, the F sequences of each video contiguous.
        num_frames: F.
        query_pos: position of the pooling token in each sequence: an int (vision CLS: 0) or a
            ``LongTensor[B*F]`` (text EOT positions).
        attn_mask: the block's ordinary (within-sequence) attention mask, MHA convention (e.g. causal).
        key_valid: ``BoolTensor[B*F, T]``, True for tokens the video-level query may attend to (text:
            positions <= EOT); None = all tokens.
    Returns:
        ``[B*F, T, D]``.
    """
    attn = block.attn
    if not isinstance(attn, LoRAAttention):
        raise TypeError(
            "fusion_block_forward needs a block whose attn is a LoRAAttention (install LoRA first)"
        )
    bf, t, d = x.shape
    if bf % num_frames:
        raise ValueError(f"batch of {bf} sequences is not a multiple of num_frames={num_frames}")
    b, heads, hd = bf // num_frames, attn.num_heads, attn.head_dim

    q, k, v = attn.project_heads(block.ln_1(x))  # [BF, H, T, hd]
    mask = sdpa_mask(attn_mask, None, bf, heads, t, t, q.dtype)
    o = attn.out_proj(attn.merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))

    if isinstance(query_pos, int):
        q_pool, o_pool = q[:, :, query_pos], o[:, query_pos]
    else:
        rows = torch.arange(bf, device=x.device)
        q_pool, o_pool = q[rows, :, query_pos], o[rows, query_pos]
    q_vid = q_pool.reshape(b, num_frames, heads, hd).transpose(1, 2)  # [B, H, F, hd]
    k_vid = k.reshape(b, num_frames, heads, t, hd)
    if layer.key_pos is not None:
        if layer.key_pos.shape[0] != num_frames:
            raise ValueError(
                f"temporal_position was built for {layer.key_pos.shape[0]} frames, got {num_frames}; "
                "set num_frames in DiscoVLAConfig to the number of sampled frames"
            )
        k_vid = k_vid + layer.key_pos.view(1, num_frames, heads, 1, hd)
    k_vid = k_vid.transpose(1, 2).reshape(b, heads, num_frames * t, hd)
    v_vid = v.reshape(b, num_frames, heads, t, hd).transpose(1, 2).reshape(b, heads, num_frames * t, hd)
    vid_mask = None if key_valid is None else key_valid.reshape(b, 1, 1, num_frames * t)
    c2 = F.scaled_dot_product_attention(q_vid, k_vid, v_vid, attn_mask=vid_mask)  # [B, H, F, hd]
    c2 = attn.out_proj(c2.transpose(1, 2).reshape(bf, d))
    fused = c2 + layer.adapter(o_pool)  # [BF, D]

    if isinstance(query_pos, int):
        o = torch.cat([o[:, :query_pos], fused[:, None], o[:, query_pos + 1 :]], dim=1)
    else:
        is_pool = torch.arange(t, device=x.device)[None, :] == query_pos[:, None]  # [BF, T]
        o = torch.where(is_pool[:, :, None], fused[:, None, :], o)
    x = x + block.ls_1(o)
    return x + block.ls_2(block.mlp(block.ln_2(x)))
