"""Analytic FLOP count of one DiscoVLA training step, and model FLOPs utilisation (MFU).

:func:`step_flops` counts, from the shapes of a :class:`~discovla.model.DiscoVLA` (widths, MLP widths, LoRA
ranks, adapter widths, fused layers, patch size, tokens per image) and of the batch, the floating-point
operations of one training step ``loss(encode_frames, encode_text, encode_pseudo).backward()``:

* **Forward** of each tower: per residual block of width ``D``, MLP width ``M``, LoRA rank ``r`` on ``n``
  sequences of ``T`` tokens: q/k/v ``6nTD^2``, LoRA ``8nTDr`` (``x A^T`` then ``(.) B^T``), attention
  ``4nT^2D`` (``QK^T`` and ``PV``, dense: the causal text mask is an additive mask, every score is computed),
  out-projection ``2nTD^2``, MLP ``4nTDM``. An IVFusion block adds, per sequence (frame / pseudo caption) of
  a video of ``F``: the video-level attention of its pooling token over all ``F*T`` keys ``4FTD``, the
  out-projection of that output ``2D^2`` and the adapter ``4Da`` (``a`` = adapter width). Vision also runs
  the patch embedding (a convolution, ``2 n P (C p^2) D`` for ``P`` patches) and the output projection
  ``2nDE``; text the output projection ``2nDE`` of the pooled token. The loss: ``S_video = t v^T``
  ``2B^2E`` and, with pseudo captions, the PImgAlign similarities ``2B^2F^2E``.
* **Backward**: what autograd runs. Every CLIP weight is frozen, so no weight gradient of a CLIP matrix is
  computed (a ``6 x params x tokens`` rule would count them); activation gradients flow through the frozen
  matrices (``dX = dY W``: the same FLOPs as their forward) from the first block with a trainable
  parameter on. Weight gradients are computed for the LoRA factors and the adapters only. Not computed:
  the patch embedding's backward (frozen, its input is the pixels), the input gradient of each tower's
  first block (its input is the frozen embedding: no ``dX`` for q/k/v and LoRA ``A``; this is the whole
  backward of blocks before the first trainable parameter when ``lora_rank`` is 0). Attention backward is
  ``2x`` its forward (``dV``, ``dP``, ``dQ``, ``dK``; the flash kernel's internal recomputation of ``P`` is
  not counted, as :class:`torch.utils.flop_counter.FlopCounterMode` does not count it).
* **Recomputation** (activation checkpointing): the forward of every checkpointed block that is part of the
  backward graph runs once more in backward, except its last matrix product (the MLP's ``c_proj``,
  ``2nTDM``): torch's non-reentrant checkpoint stops recomputing as soon as the last tensor saved for
  backward is rebuilt (``set_checkpoint_early_stop``, on by default), and ``c_proj`` only saves its frozen
  weight, before it runs. It is counted in ``hardware_flops`` only; ``model_flops`` (forward + backward) is
  what MFU divides by.

Matrix products count ``2 m n k``. Ignored (a few per mille of a ViT-B step): layer norms, softmax, GELU,
residual adds, scaling, masks, L2 normalisation, the loss's softmax/log/KL terms and AdamW's element-wise
update (``~0.5M`` trainable parameters). These are exactly the terms :class:`FlopCounterMode` does not count
either, so the two agree (``tests/test_flops.py``) when SDPA runs a kernel it knows (math on CPU).

``peak_bf16_flops`` is the card's dense BF16 tensor-core peak, from NVIDIA's datasheets (the figure WITHOUT
structured sparsity, i.e. half of the datasheet's starred number).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

if TYPE_CHECKING:
    from discovla.model import DiscoVLA

# Dense BF16 tensor-core peak (FLOP/s, no sparsity) from NVIDIA's product datasheets; the first pattern that
# matches torch.cuda.get_device_name() (lower case) wins, so the more specific names come first.
PEAK_BF16_DENSE: tuple[tuple[str, float], ...] = (
    (r"h100.*(pcie|pci-e)", 756e12),  # H100 PCIe (1,513 TFLOPS with sparsity)
    (r"h100.*nvl", 835e12),  # H100 NVL (1,671 with sparsity)
    (r"h200.*nvl", 835e12),  # H200 NVL (1,671 with sparsity)
    (r"gh200", 989e12),  # GH200 Grace Hopper (1,979 with sparsity)
    (r"h200", 989e12),  # H200 SXM (1,979 with sparsity)
    (r"h100", 989e12),  # H100 SXM5, "NVIDIA H100 80GB HBM3" (1,979 with sparsity)
    (r"b200", 2250e12),  # B200 (HGX B200: 4.5 PFLOPS per GPU with sparsity)
    (r"a100", 312e12),  # A100 SXM4 and PCIe, 40 and 80 GB (624 with sparsity)
    (r"l40s", 362e12),  # L40S (733 with sparsity)
    (r"\bl40\b", 181e12),  # L40 (362 with sparsity)
    (r"\bl4\b", 121e12),  # L4 (242 with sparsity)
    (r"\ba10\b", 125e12),  # A10 (250 with sparsity); not the A10G
)


def peak_bf16_flops(device_name: str) -> float | None:
    """Dense BF16 peak FLOP/s of the GPU called ``device_name`` (``torch.cuda.get_device_name()``), or None
    for a device not in :data:`PEAK_BF16_DENSE` (CPUs, unknown cards)."""
    name = device_name.lower()
    for pattern, peak in PEAK_BF16_DENSE:
        if re.search(pattern, name):
            return peak
    return None


def mfu(model_flops: float, seconds: float, peak: float) -> float:
    """Model FLOPs utilisation: ``model_flops / seconds`` as a fraction of ``peak`` FLOP/s."""
    if seconds <= 0 or peak <= 0:
        raise ValueError(f"seconds and peak must be positive, got {seconds} and {peak}")
    return model_flops / seconds / peak


def text_length(model: DiscoVLA, tokens: Tensor) -> int:
    """Token columns that :meth:`DiscoVLA.encode_text` / ``encode_pseudo`` run for ``tokens [..., L]``: the
    padding after the last pooled (EOT) token of the batch is trimmed (causal mask)."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    return int(model._trim_padding(flat, model._pool_positions(flat)).shape[-1])


def _zero() -> dict[str, int]:
    return {"forward": 0, "backward": 0, "recompute": 0, "frozen_weight_grads": 0, "input_grads": 0}


def _tower(
    blocks: nn.ModuleList,
    fusion: nn.ModuleList,
    n: int,
    t: int,
    frames: int,
    checkpointing: bool,
) -> tuple[dict[str, int], bool]:
    """FLOPs of the residual blocks of one tower on ``n`` sequences of ``t`` tokens (``frames`` per video);
    also whether the tower's output requires grad. ``frozen_weight_grads`` / ``input_grads``: what autograd
    does NOT compute (weight gradients of frozen matrices; input gradients of blocks whose input needs
    none)."""
    out = _zero()
    first_fused = len(blocks) - len(fusion)
    grad = False  # does the block's input require grad?
    for i, block in enumerate(blocks):
        attn = block.attn
        d, m, r = attn.embed_dim, block.mlp.c_fc.out_features, attn.rank
        layer = fusion[i - first_fused] if i >= first_fused else None
        frozen = n * t * (8 * d * d + 4 * d * m)  # q/k/v, out-projection, MLP
        fwd = frozen + 8 * n * t * d * r + 4 * n * t * t * d
        qkv_grad = grad or r > 0  # q, k, v (and everything after them) require grad
        bwd = 6 * n * t * d * d if grad else 0  # dX through the frozen q/k/v projection
        if r:  # LoRA: dA, dB, d(xA^T); dX through A only if the input needs it
            bwd += 14 * n * t * d * r + (2 * n * t * d * r if grad else 0)
        if qkv_grad:
            bwd += 8 * n * t * t * d + 2 * n * t * d * d  # attention, out-projection dX
        if layer is not None:
            a = layer.adapter.down.out_features
            fwd += n * (4 * frames * t * d + 2 * d * d + 4 * d * a)
            frozen += 2 * n * d * d
            if qkv_grad or layer.key_pos is not None:  # SDPA kernels' backward computes dQ, dK, dV together
                bwd += 8 * n * frames * t * d + 2 * n * d * d  # (math path with lora_rank 0: half of it)
            bwd += 6 * n * d * a + (2 * n * d * a if qkv_grad else 0)  # dW_down, dW_up, dH; dO_pool
        out_grad = qkv_grad or layer is not None
        if out_grad:
            bwd += 4 * n * t * d * m  # MLP dX
        if not grad:  # input gradients autograd skips: q/k/v dX (and A) in a block whose input needs none
            out["input_grads"] += 6 * n * t * d * d + 2 * n * t * d * r
            if not qkv_grad:
                out["input_grads"] += 8 * n * t * t * d + 2 * n * t * d * d
            if not out_grad:
                out["input_grads"] += 4 * n * t * d * m
        out["forward"] += fwd
        out["backward"] += bwd
        out["frozen_weight_grads"] += frozen
        if checkpointing and out_grad:
            # torch's non-reentrant checkpoint stops recomputing once the last tensor saved for backward
            # is rebuilt: the MLP's c_proj saves its (frozen) weight before it runs, so it is not rerun
            out["recompute"] += fwd - 2 * n * t * d * m
        grad = out_grad
    return out, grad


def _projection_flops(proj: Any, n: int) -> tuple[int, int]:
    """(in, out) features of an output projection (Parameter ``[in, out]``, nn.Linear or None) times ``n``
    rows, as ``2 n in out`` or 0."""
    if proj is None:
        return 0, 0
    shape = (proj.in_features, proj.out_features) if isinstance(proj, nn.Linear) else tuple(proj.shape)
    return 2 * n * shape[0] * shape[1], shape[1]


def step_flops(
    model: DiscoVLA,
    batch: int,
    frames: int,
    text_len: int,
    pseudo_len: int | None = None,
    checkpointing: bool = False,
) -> dict[str, Any]:
    """FLOPs of one training step of ``model`` on ``batch`` videos of ``frames`` frames (per device).

    Args:
        model: the DiscoVLA model (shapes are read from it; its weights do not matter).
        batch: videos (and captions) per step on this device.
        frames: frames per video (also pseudo captions per video).
        text_len: caption token columns run, after trimming (:func:`text_length`).
        pseudo_len: pseudo-caption token columns run, after trimming; None = no pseudo-caption branch
            (LoRA only, ``alpha = beta = 0``).
        checkpointing: activation checkpointing on (adds the recomputation to ``hardware_flops``).
    Returns:
        ``model_flops`` (forward + backward), ``hardware_flops`` (+ recomputation), ``forward``,
        ``backward``, ``recompute``, and ``towers``: per part (``vision``, ``text``, ``pseudo``, ``loss``)
        ``forward`` / ``backward`` / ``recompute`` plus what autograd does not compute:
        ``frozen_weight_grads`` (weight gradients of frozen matrices) and ``input_grads`` (input gradients
        nothing needs: the first block's, the patch embedding's). Python ints.
    """
    clip = model.clip
    visual = clip.visual
    if visual.attn_pool is not None:
        raise NotImplementedError("step_flops does not count an attentional-pool vision tower")
    n_img = batch * frames
    towers: dict[str, dict[str, int]] = {}

    # vision: patch embedding (frozen conv on the pixels: no backward), blocks, projection
    conv = visual.conv1
    grid = int(visual.grid_size[0] * visual.grid_size[1])
    tokens = grid + 1  # patches + CLS
    patch = 2 * n_img * grid * conv.weight[0].numel() * conv.out_channels
    vis, vis_grad = _tower(
        visual.transformer.resblocks, model.vision_fusion, n_img, tokens, frames, checkpointing
    )
    proj, embed_dim = _projection_flops(visual.proj, n_img)
    vis["forward"] += patch + proj
    vis["backward"] += proj if vis_grad else 0
    vis["frozen_weight_grads"] += patch + proj
    vis["input_grads"] += patch + (0 if vis_grad else proj)
    towers["vision"] = vis

    # text: captions (plain blocks) and pseudo captions (text IVFusion)
    runs = [("text", batch, text_len, nn.ModuleList())]
    if pseudo_len is not None:
        runs.append(("pseudo", n_img, pseudo_len, model.text_fusion))
    grads = {"vision": vis_grad}
    for name, n, length, fusion in runs:
        part, part_grad = _tower(clip.transformer.resblocks, fusion, n, length, frames, checkpointing)
        grads[name] = part_grad
        head, dim = _projection_flops(clip.text_projection, n)
        embed_dim = embed_dim or dim
        part["forward"] += head
        part["backward"] += head if part_grad else 0
        part["frozen_weight_grads"] += head
        part["input_grads"] += 0 if part_grad else head
        towers[name] = part

    # loss: S_video (t v^T) and PImgAlign's pseudo x frame similarities; one input gradient per side that
    # requires grad (both, unless lora_rank is 0)
    e = embed_dim or visual.transformer.width
    loss = _zero()
    s_video = 2 * batch * batch * e
    loss["forward"] = s_video
    loss["backward"] = s_video * (grads["text"] + grads["vision"])
    if pseudo_len is not None:
        s_img = 2 * batch * batch * frames * frames * e
        loss["forward"] += s_img
        loss["backward"] += s_img * (grads["pseudo"] + grads["vision"])
    towers["loss"] = loss

    total = {k: sum(p[k] for p in towers.values()) for k in ("forward", "backward", "recompute")}
    model_flops = total["forward"] + total["backward"]
    return {
        "model_flops": model_flops,
        "hardware_flops": model_flops + total["recompute"],
        **total,
        "towers": towers,
        "batch": batch,
        "frames": frames,
        "text_len": text_len,
        "pseudo_len": pseudo_len,
        "checkpointing": checkpointing,
    }
