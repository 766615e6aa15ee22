"""The DiscoVLA model: LoRA + IVFusion on a frozen open_clip CLIP.

:class:`DiscoVLA` takes an ``open_clip.CLIP`` (ViT vision tower, default attention blocks), freezes every
CLIP parameter, installs LoRA in every attention layer of both towers *in place* (so the passed ``clip``'s own
``encode_image`` / ``encode_text`` become the LoRA-only image-level encoders), and adds IVFusion adapters for
the last ``vision_layers`` vision blocks and ``text_layers`` text blocks (see :mod:`discovla.model.fusion`).
Only LoRA A/B, the adapters and (optionally) the temporal key positions and the temporal module
(:mod:`discovla.model.temporal`, an order-aware extension) train. The frozen CLIP always runs
in eval mode, whatever ``train()`` says.

Shapes: pixels ``[B, F, 3, H, W]`` (already normalised), tokens ``[N, L]`` with ``L <= context_length``,
pseudo-caption tokens ``[B, F, L]``. Outputs are projected, NOT normalised.

Activation checkpointing (:meth:`DiscoVLA.set_activation_checkpointing`, off by default; a run-time memory
setting, not part of :class:`DiscoVLAConfig`: it changes no number) runs every residual block of both towers
(plain blocks and IVFusion blocks, in :meth:`~DiscoVLA.encode_frames`, :meth:`~DiscoVLA.encode_text` and
:meth:`~DiscoVLA.encode_pseudo`) under ``torch.utils.checkpoint.checkpoint(use_reentrant=False)`` whenever
grad is enabled: only each block's input is kept for backward, and the block's forward runs again there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import open_clip
import torch
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from discovla.config import FramesParams, FusionParams, LoraParams, TemporalParams
from discovla.errors import DiscoVLAError
from discovla.losses import video_embedding
from discovla.model.fusion import FusionLayer, fusion_block_forward
from discovla.model.lora import install_lora
from discovla.model.temporal import TemporalModule, TrendPooling

_LORA, _FUSION, _FRAMES = LoraParams(), FusionParams(), FramesParams()  # defaults: discovla/config.py
_TEMPORAL = TemporalParams()


class AdapterStateError(DiscoVLAError, ValueError):
    """An adapter state dict does not match the model (names or shapes)."""


@dataclass(frozen=True)
class DiscoVLAConfig:
    """What to train on top of the frozen CLIP (params.yaml: ``lora``, ``fusion``; validated there). F is
    the number of frames per video of the feature cache."""

    lora_rank: int = _LORA.rank
    fusion: bool = _FUSION.enabled
    vision_layers: int = _FUSION.vision_layers
    text_layers: int = _FUSION.text_layers
    adapter_dim: int = _FUSION.adapter_dim
    temporal_position: bool = _FUSION.temporal_position
    num_frames: int = _FRAMES.num_frames
    temporal_module: bool = (
        _TEMPORAL.module
    )  # order-aware extension (discovla.model.temporal), off: the paper
    temporal_width: int = _TEMPORAL.width
    temporal_layers: int = _TEMPORAL.layers
    temporal_trends: int = _TEMPORAL.trends  # time trends pooled beside the mean (TrendPooling); 0: the paper


class DiscoVLA(nn.Module):
    """LoRA + IVFusion on a frozen open_clip CLIP (modified in place)."""

    def __init__(self, clip: open_clip.CLIP, cfg: DiscoVLAConfig) -> None:
        super().__init__()
        _check_clip(clip, cfg)
        self.cfg = cfg
        self.clip = clip
        for p in clip.parameters():
            p.requires_grad_(False)
        install_lora(clip.visual.transformer.resblocks, cfg.lora_rank)
        install_lora(clip.transformer.resblocks, cfg.lora_rank)
        hv, ht = (cfg.vision_layers, cfg.text_layers) if cfg.fusion else (0, 0)
        self.vision_fusion = self._fusion_layers(clip.visual.transformer.resblocks, hv)
        self.text_fusion = self._fusion_layers(clip.transformer.resblocks, ht)
        # built last, and only when asked: the faithful model draws exactly the paper model's initial weights
        self.temporal = (
            TemporalModule(_embed_dim(clip), cfg.num_frames, cfg.temporal_width, cfg.temporal_layers).to(
                clip.logit_scale.device
            )
            if cfg.temporal_module
            else None
        )
        self.trends = (
            TrendPooling(_embed_dim(clip), cfg.num_frames, cfg.temporal_trends).to(clip.logit_scale.device)
            if cfg.temporal_trends
            else None
        )
        self._trainable = [n for n, p in self.named_parameters() if p.requires_grad]
        self._activation_checkpointing = False
        self.clip.eval()

    def _fusion_layers(self, blocks: nn.ModuleList, n: int) -> nn.ModuleList:
        w = blocks[0].attn.in_proj_weight
        frames = self.cfg.num_frames if self.cfg.temporal_position else None
        return nn.ModuleList(
            FusionLayer(w.shape[1], self.cfg.adapter_dim, frames, dtype=w.dtype, device=w.device)
            for _ in range(n)
        )

    def train(self, mode: bool = True) -> DiscoVLA:
        """Set the trainable modules' mode; the frozen CLIP stays in eval mode (no dropout/patch dropout)."""
        super().train(mode)
        self.clip.eval()
        return self

    # ---- activation checkpointing ----------------------------------------------------------------------
    @property
    def activation_checkpointing(self) -> bool:
        """Whether residual blocks run under activation checkpointing when grad is enabled."""
        return self._activation_checkpointing

    def set_activation_checkpointing(self, enabled: bool = True) -> DiscoVLA:
        """Turn per-block activation checkpointing on or off (returns ``self``). Same loss and gradients
        either way; on, a training step keeps one ``[N, T, D]`` tensor per block instead of the block's
        activations and pays one more forward of every block in backward."""
        self._activation_checkpointing = bool(enabled)
        return self

    def _block(self, fn: Callable[..., Tensor], *args: Any, **kwargs: Any) -> Tensor:
        """``fn(*args, **kwargs)``: one residual block, checkpointed if enabled and grad is on."""
        if self._activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False, **kwargs)
        return fn(*args, **kwargs)

    # ---- vision --------------------------------------------------------------------------------------
    def embed_frames(self, pixels: Tensor) -> Tensor:
        """``[B, F, 3, H, W] -> [B, F, T, D]``: the frozen patch/CLS/position embedding + ln_pre, i.e. the
        input of the first (LoRA-adapted) vision block."""
        if pixels.dim() != 5:
            raise ValueError(f"pixels must be [B, F, 3, H, W], got shape {tuple(pixels.shape)}")
        b, f = pixels.shape[:2]
        x = self.clip.visual._embeds(pixels.flatten(0, 1))
        return x.view(b, f, *x.shape[1:])

    def encode_frame_tokens(self, x: Tensor) -> Tensor:
        """``[B, F, T, D]`` (output of :meth:`embed_frames`) ``-> [B, F, E]`` projected CLS per frame."""
        if x.dim() != 4:
            raise ValueError(f"frame tokens must be [B, F, T, D], got shape {tuple(x.shape)}")
        b, f = x.shape[:2]
        visual = self.clip.visual
        x = x.flatten(0, 1)
        blocks = visual.transformer.resblocks
        first_fused = len(blocks) - len(self.vision_fusion)
        for i, block in enumerate(blocks):
            if i < first_fused:
                x = self._block(block, x)
            else:
                x = self._block(fusion_block_forward, block, self.vision_fusion[i - first_fused], x, f, 0)
        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled.view(b, f, -1)

    def encode_frames(self, pixels: Tensor) -> Tensor:
        """``[B, F, 3, H, W] -> [B, F, E]``: projected CLS per frame (IVFusion if enabled), not normalised."""
        return self.encode_frame_tokens(self.embed_frames(pixels))

    # ---- text ----------------------------------------------------------------------------------------
    def _embed_text(self, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        length = tokens.shape[-1]
        cast = self.clip.transformer.get_cast_dtype()
        x = self.clip.token_embedding(tokens).to(cast) + self.clip.positional_embedding[:length].to(cast)
        mask = self.clip.attn_mask
        return x, (mask[:length, :length] if mask is not None else None)

    def _pool_positions(self, tokens: Tensor) -> Tensor:
        """Index of the pooled (EOT) token of each row of ``tokens [N, L]``, as open_clip pools."""
        if tokens.shape[-1] > self.clip.context_length:
            raise ValueError(
                f"{tokens.shape[-1]} text tokens exceed the CLIP context length {self.clip.context_length}"
            )
        pool = self.clip.text_pool_type
        if pool == "argmax":
            return tokens.argmax(dim=-1)
        if pool == "eos":
            return (tokens == self.clip.text_eos_id).int().argmax(dim=-1)
        if pool in ("last", "first"):
            fill = tokens.shape[-1] - 1 if pool == "last" else 0
            return torch.full(tokens.shape[:1], fill, dtype=torch.long, device=tokens.device)
        raise NotImplementedError(
            f"text pool_type {pool!r} is not supported (use argmax, eos, last or first)"
        )

    def _trim_padding(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """Drop the columns after the last pooled token: with a causal mask they never reach the output."""
        if self.clip.attn_mask is None or self.clip.text_pool_type == "last" or tokens.numel() == 0:
            return tokens
        return tokens[..., : int(pos.max()) + 1]

    def _text_head(self, x: Tensor, pos: Tensor) -> Tensor:
        pooled = self.clip.ln_final(x[torch.arange(x.shape[0], device=x.device), pos])
        proj = self.clip.text_projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj

    def encode_text(self, tokens: Tensor) -> Tensor:
        """``LongTensor[N, L] -> [N, E]``: projected EOT with ordinary causal attention + LoRA."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [N, L], got shape {tuple(tokens.shape)}")
        pos = self._pool_positions(tokens)
        x, mask = self._embed_text(self._trim_padding(tokens, pos))
        for block in self.clip.transformer.resblocks:
            x = self._block(block, x, attn_mask=mask)
        return self._text_head(x, pos)

    def encode_pseudo(self, tokens: Tensor) -> Tensor:
        """``LongTensor[B, F, L] -> [B, F, E]``: pseudo captions, text IVFusion on EOT if enabled."""
        if tokens.dim() != 3:
            raise ValueError(f"pseudo tokens must be [B, F, L], got shape {tuple(tokens.shape)}")
        b, f = tokens.shape[:2]
        pos = self._pool_positions(tokens.flatten(0, 1))
        flat = self._trim_padding(tokens.flatten(0, 1), pos)
        length = flat.shape[-1]
        x, mask = self._embed_text(flat)
        blocks = self.clip.transformer.resblocks
        first_fused = len(blocks) - len(self.text_fusion)
        if first_fused < len(blocks) and self.clip.text_pool_type == "first":
            raise NotImplementedError("text IVFusion needs an EOT-pooled text tower (argmax, eos or last)")
        valid = torch.arange(length, device=tokens.device)[None, :] <= pos[:, None]
        for i, block in enumerate(blocks):
            if i < first_fused:
                x = self._block(block, x, attn_mask=mask)
            else:
                layer = self.text_fusion[i - first_fused]
                fwd = fusion_block_forward
                x = self._block(fwd, block, layer, x, f, pos, attn_mask=mask, key_valid=valid)
        return self._text_head(x, pos).view(b, f, -1)

    # ---- misc ----------------------------------------------------------------------------------------
    @property
    def order_blind(self) -> bool:
        """Whether a video and its time reversal get the same embedding by construction (the paper's model:
        no temporal module, no frame positions in the video-level attention)."""
        return self.temporal is None and self.trends is None and not self.cfg.temporal_position

    def video_features(self, frame_feats: Tensor) -> Tensor:
        """``[B, F, E] -> [B, F, E]``: the frame features the video feature is pooled from (through the
        temporal module when there is one; PImgAlign uses the frame features themselves)."""
        return frame_feats if self.temporal is None else self.temporal(frame_feats)

    def video_embedding(self, frame_feats: Tensor) -> Tensor:
        """``[B, F, E] -> [B, E]`` = normalise(mean_f normalise(video_features(frame_feats))), with time
        trends beside the mean when ``temporal_trends`` is set (:class:`TrendPooling`)."""
        feats = self.video_features(frame_feats)
        return video_embedding(feats) if self.trends is None else self.trends(feats)

    @property
    def logit_scale(self) -> float:
        """The frozen CLIP's similarity multiplier tau = exp(logit_scale) (100 for OpenAI CLIP)."""
        return float(self.clip.logit_scale.detach().exp().item())

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = dict(self.named_parameters())
        return [params[n] for n in self._trainable]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """Only the trainable tensors (LoRA, adapters, key positions), detached copies, stable names."""
        params = dict(self.named_parameters())
        return {n: params[n].detach().clone() for n in self._trainable}

    def load_adapter_state_dict(self, sd: dict[str, Tensor]) -> None:
        """Load tensors saved by :meth:`adapter_state_dict` (strict: names and shapes must match)."""
        params = dict(self.named_parameters())
        missing = [n for n in self._trainable if n not in sd]
        unexpected = [n for n in sd if n not in self._trainable]
        if missing or unexpected:
            raise AdapterStateError(
                f"adapter state does not match this model config {self.config_dict()}: "
                f"missing {missing[:3]}{'...' if len(missing) > 3 else ''} ({len(missing)}), "
                f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''} ({len(unexpected)})"
            )
        for n in self._trainable:
            if tuple(sd[n].shape) != tuple(params[n].shape):
                raise AdapterStateError(
                    f"adapter tensor {n}: shape {tuple(sd[n].shape)} in the state, {tuple(params[n].shape)} "
                    "in the model (different backbone, lora.rank or fusion.adapter_dim?)"
                )
        with torch.no_grad():
            for n in self._trainable:
                params[n].copy_(sd[n])

    def config_dict(self) -> dict[str, Any]:
        """The :class:`DiscoVLAConfig` as a JSON-able dict."""
        return dataclasses.asdict(self.cfg)


def _embed_dim(clip: open_clip.CLIP) -> int:
    """Width of the projected (joint) embedding space."""
    proj = clip.visual.proj
    return int(proj.shape[1]) if proj is not None else int(clip.visual.transformer.width)


def _check_clip(clip: nn.Module, cfg: DiscoVLAConfig) -> None:
    if not isinstance(clip, open_clip.CLIP):
        raise TypeError(
            f"DiscoVLA needs an open_clip.CLIP (ViT + built-in text tower), got {type(clip).__name__}"
        )
    visual = clip.visual
    if not isinstance(visual, VisionTransformer):
        raise TypeError(f"DiscoVLA needs a ViT vision tower, got {type(visual).__name__}")
    for name, tower in (("vision", visual.transformer), ("text", clip.transformer)):
        if not tower.batch_first:
            raise TypeError(f"the {name} transformer must be batch_first (open_clip >= 2.23 default)")
    if cfg.fusion:
        if visual.attn_pool is not None or visual.pool_type != "tok":
            raise TypeError("vision IVFusion needs CLS-token pooling (pool_type 'tok', no attentional pool)")
        for name, n, blocks in (
            ("vision_layers", cfg.vision_layers, visual.transformer.resblocks),
            ("text_layers", cfg.text_layers, clip.transformer.resblocks),
        ):
            if n > len(blocks):
                raise ValueError(f"fusion.{name}={n} exceeds the {len(blocks)} blocks of the tower")
