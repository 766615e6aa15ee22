"""The frozen backbone wrapper: tokenizer, preprocessing, batched normalised encoders."""

from __future__ import annotations

import pytest
import torch

from discovla.backbone import encode_texts, load_backbone, pad_tokens, preprocess_uint8
from discovla.clip_factory import BackboneError


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_tiny_config_is_frozen_clip(tiny_backbone) -> None:
    assert (
        tiny_backbone.image_size == 32
        and tiny_backbone.embed_dim == 64
        and tiny_backbone.context_length == 16
    )
    assert tiny_backbone.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert not tiny_backbone.model.training
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())
    assert len(tiny_backbone.model.visual.transformer.resblocks) >= 4
    assert tiny_backbone.tokenizer(["a red circle", "two blue squares"]).shape == (2, 16)


def test_preprocess_layouts_and_checks() -> None:
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    chw = _images(2, 4)
    out = preprocess_uint8(chw, mean, std)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 4)
    expected = (chw[:, 1].float() / 255 - 0.25) / 0.25
    assert torch.allclose(out[:, 1], expected)
    assert torch.equal(preprocess_uint8(chw.permute(0, 2, 3, 1).numpy(), mean, std), out)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_uint8(chw.float(), mean, std)
    with pytest.raises(ValueError, match="frames.size"):
        preprocess_uint8(chw, mean, std, image_size=32)


def test_encoders_are_normalised_and_batch_independent(tiny_backbone) -> None:
    images = _images(7)
    a = tiny_backbone.encode_images(images, batch_size=3)
    b = tiny_backbone.encode_images(images, batch_size=7)
    assert a.shape == (7, 64)
    assert torch.allclose(a.norm(dim=-1), torch.ones(7), atol=1e-5)
    assert torch.allclose(a, b, atol=1e-6)
    texts = ["a red circle", "a red circle on the left and a blue square at the bottom"]
    t = tiny_backbone.encode_texts(texts, batch_size=1)
    assert torch.allclose(t, encode_texts(tiny_backbone, tiny_backbone.tokenize(texts)), atol=1e-6)
    assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_short_context_padding_keeps_eot_feature(tiny_backbone) -> None:
    """Tokens at length 16 zero-padded to the model's 32 give the same feature as tokenising at 32."""
    full = load_backbone("tiny-clip", None, context_length=32)
    full.model.load_state_dict(tiny_backbone.model.state_dict())
    texts = ["a small yellow star at the top right"]
    assert torch.allclose(tiny_backbone.encode_texts(texts), full.encode_texts(texts), atol=1e-6)
    assert pad_tokens(tiny_backbone.tokenize(texts), 32).shape == (1, 32)
    with pytest.raises(BackboneError, match="context_length"):
        load_backbone("tiny-clip", None, context_length=64)
