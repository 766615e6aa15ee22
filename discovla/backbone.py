"""Frozen CLIP backbones: an open_clip ``CLIP`` with what the pipeline needs to feed it.

``load_backbone(name, pretrained)`` builds the model through :mod:`discovla.clip_factory` (model names,
tags, checkpoint files, QuickGELU) and returns a :class:`Backbone`: eval mode, every parameter frozen,
with its tokenizer, image size and normalisation. Texts are tokenised with open_clip's BPE tokenizer at the
pipeline's context length (``model.context_length``), which may be shorter than the model's positional
table (32 for ViT-B, like the reference code): :func:`encode_texts` pads the tokens with zeros to the
model's length, which leaves the causal-attention EOT feature unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from discovla.batching import batches
from discovla.clip_factory import BackboneError, create_clip
from discovla.images import normalise


class Tokenizer:
    """open_clip BPE tokenizer at a fixed context length: ``texts -> LongTensor [N, context_length]``.

    Texts longer than the context are truncated with the EOT token kept last (open_clip behaviour).
    """

    def __init__(self, context_length: int) -> None:
        self.context_length = context_length

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return open_clip.tokenize(list(texts), context_length=self.context_length)


@dataclass
class Backbone:
    """A frozen open_clip CLIP with what the pipeline needs to feed it."""

    model: open_clip.CLIP
    tokenizer: Tokenizer
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int
    logit_scale: float
    name: str
    pretrained: str | None

    @classmethod
    def from_model(
        cls,
        model: open_clip.CLIP,
        name: str,
        context_length: int | None = None,
        pretrained: str | None = None,
        preprocess: dict[str, Any] | None = None,
    ) -> Backbone:
        """Wrap ``model`` as it is (trainable or frozen). ``context_length`` (``None``: the model's own) may
        not exceed the model's positional table; ``preprocess`` overrides the model's mean/std."""
        pre = {**open_clip.get_model_preprocess_cfg(model), **(preprocess or {})}
        model_ctx = int(model.context_length)
        ctx = model_ctx if context_length is None else int(context_length)
        if not 2 <= ctx <= model_ctx:
            raise BackboneError(
                f"model.context_length: must be between 2 and {model_ctx} for {name}, got {ctx}"
            )
        size = model.visual.image_size
        return cls(
            model=model,
            tokenizer=Tokenizer(ctx),
            image_size=int(size[0] if isinstance(size, tuple | list) else size),
            mean=tuple(float(x) for x in pre["mean"]),
            std=tuple(float(x) for x in pre["std"]),
            embed_dim=int(model.text_projection.shape[1]),
            logit_scale=float(model.logit_scale.detach().exp().item()),
            name=name,
            pretrained=pretrained or None,
        )

    @property
    def context_length(self) -> int:
        """Tokens per text as produced by :attr:`tokenizer` (the pipeline's ``model.context_length``)."""
        return self.tokenizer.context_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Token ids ``[N, context_length]`` (same as calling :attr:`tokenizer`)."""
        return self.tokenizer(texts)

    def preprocess_uint8(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Normalise uint8 frames already at ``image_size`` (see :func:`preprocess_uint8`)."""
        return preprocess_uint8(pixels, self.mean, self.std, image_size=self.image_size)

    def encode_images(self, pixels: torch.Tensor | np.ndarray, batch_size: int = 256) -> torch.Tensor:
        return encode_images(self, pixels, batch_size)

    def encode_texts(self, texts: Sequence[str] | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return encode_texts(self, texts, batch_size)


def load_backbone(
    name: str, pretrained: str | None, device: str | torch.device = "cpu", context_length: int | None = None
) -> Backbone:
    """A frozen open_clip CLIP ``name`` with weights from ``pretrained`` (see :mod:`discovla.clip_factory`).

    ``context_length`` (the pipeline's ``model.context_length``) sets the tokenizer's length; ``None``
    uses the model's own. It may not exceed the model's positional table.
    Raises :class:`BackboneUnavailable` when a tag cannot be downloaded, :class:`BackboneError` otherwise.
    """
    model, preprocess = create_clip(name, pretrained, device)
    model.eval()
    model.requires_grad_(False)
    return Backbone.from_model(model, name, context_length, pretrained, preprocess)


def preprocess_uint8(
    pixels: torch.Tensor | np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int | None = None,
) -> torch.Tensor:
    """uint8 RGB images ``[..., 3, H, W]`` or ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]``, normalised.

    No resizing: frames must already be ``image_size`` square (checked when given). A shape with 3 both
    first and last is read as channels-first.
    """
    x = torch.as_tensor(pixels)
    if x.dtype != torch.uint8:
        raise ValueError(f"preprocess_uint8: expected uint8 pixels, got {x.dtype}")
    if x.ndim < 3:
        raise ValueError(f"preprocess_uint8: expected [..., 3, H, W] or [..., H, W, 3], got {tuple(x.shape)}")
    if x.shape[-3] != 3:
        if x.shape[-1] != 3:
            raise ValueError(f"preprocess_uint8: no RGB channel axis in shape {tuple(x.shape)}")
        x = x.movedim(-1, -3)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        raise ValueError(
            f"preprocess_uint8: images are {tuple(x.shape[-2:])}, the backbone needs "
            f"{image_size}x{image_size} (set frames.size: {image_size})"
        )
    return normalise(x, mean, std)


def pad_tokens(tokens: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad ``[N, L]`` tokens to ``[N, length]`` (open_clip's pad id is 0; the EOT stays in place)."""
    if tokens.shape[1] > length:
        raise ValueError(f"tokens have {tokens.shape[1]} positions, the text tower has only {length}")
    return F.pad(tokens, (0, length - tokens.shape[1])) if tokens.shape[1] < length else tokens


def _encode(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int, dim: int):
    out = [fn(x[sl]).float().cpu() for sl in batches(len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dim)


@torch.no_grad()
def encode_images(
    backbone: Backbone, pixels: torch.Tensor | np.ndarray, batch_size: int = 256
) -> torch.Tensor:
    """L2-normalised image embeddings ``[N, embed_dim]`` (float32, CPU) of uint8 images ``[N, 3, S, S]``."""
    pixels = torch.as_tensor(pixels)
    device = backbone.device

    def run(chunk: torch.Tensor) -> torch.Tensor:
        images = backbone.preprocess_uint8(chunk).to(device)
        return F.normalize(backbone.model.encode_image(images).float(), dim=-1)

    return _encode(run, pixels, batch_size, backbone.embed_dim)


@torch.no_grad()
def encode_texts(
    backbone: Backbone, texts: Sequence[str] | torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """L2-normalised text embeddings ``[N, embed_dim]`` (float32, CPU) of strings or token ids ``[N, L]``."""
    tokens = texts if isinstance(texts, torch.Tensor) else backbone.tokenizer(list(texts))
    device = backbone.device
    length = int(backbone.model.context_length)

    def run(chunk: torch.Tensor) -> torch.Tensor:
        ids = pad_tokens(chunk.long(), length).to(device)
        return F.normalize(backbone.model.encode_text(ids).float(), dim=-1)

    return _encode(run, tokens, batch_size, backbone.embed_dim)
