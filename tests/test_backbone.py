"""Backbone loading: tiny config, local checkpoints, the offline message, preprocessing and encoders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from discovla.backbone import (
    BackboneError,
    BackboneUnavailable,
    encode_texts,
    load_backbone,
    pad_tokens,
    preprocess_uint8,
)


@pytest.fixture(scope="module")
def tiny() -> object:
    torch.manual_seed(0)
    return load_backbone("tiny-clip", None, context_length=16)


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_tiny_config_is_frozen_clip(tiny) -> None:
    assert tiny.image_size == 32 and tiny.embed_dim == 64 and tiny.context_length == 16
    assert tiny.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert not tiny.model.training
    assert not any(p.requires_grad for p in tiny.model.parameters())
    assert len(tiny.model.visual.transformer.resblocks) >= 4
    assert tiny.tokenizer(["a red circle", "two blue squares"]).shape == (2, 16)


def test_offline_tag_fails_with_one_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneUnavailable) as info:
        load_backbone("ViT-B-16", "openai")
    msg = str(info.value)
    assert "\n" not in msg
    assert "model.pretrained: /path/to/file" in msg
    assert "timm/vit_base_patch16_clip_224.openai" in msg and "ViT-B-16.pt" in msg


def test_unknown_names_and_missing_files() -> None:
    with pytest.raises(BackboneError, match="unknown backbone"):
        load_backbone("no-such-model", None)
    with pytest.raises(BackboneError, match="not found"):
        load_backbone("tiny-clip", "models/none/open_clip_model.safetensors")
    with pytest.raises(BackboneError, match="tag"):
        load_backbone("tiny-clip", "openai")


def test_local_safetensors_roundtrip(tiny, tmp_path) -> None:
    torch.manual_seed(1)
    source = load_backbone("tiny-clip", None, context_length=16)
    with torch.no_grad():
        source.model.logit_scale.fill_(3.0)
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    loaded = load_backbone("tiny-clip", str(path), context_length=16)
    images, texts = _images(5), ["a red circle on the left", "a blue square", "x", "", "two green triangles"]
    assert torch.equal(loaded.encode_images(images), source.encode_images(images))
    assert torch.equal(loaded.encode_texts(texts), source.encode_texts(texts))
    assert not torch.allclose(tiny.encode_images(images), loaded.encode_images(images))
    assert loaded.logit_scale == pytest.approx(np.exp(3.0), rel=1e-5)
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_local_pt_state_dict_and_sibling_config(tmp_path) -> None:
    source = load_backbone("tiny-clip", None)
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.model.state_dict().items()}}, path)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
    loaded = load_backbone("tiny-clip", str(path))
    assert type(loaded.model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


def test_mismatched_checkpoint_is_one_line(tmp_path) -> None:
    path = tmp_path / "bad.safetensors"
    save_file({"logit_scale": torch.zeros(())}, str(path))
    with pytest.raises(BackboneError, match="does not match backbone") as info:
        load_backbone("tiny-clip", str(path))
    assert "\n" not in str(info.value)


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


def test_encoders_are_normalised_and_batch_independent(tiny) -> None:
    images = _images(7)
    a = tiny.encode_images(images, batch_size=3)
    b = tiny.encode_images(images, batch_size=7)
    assert a.shape == (7, 64)
    assert torch.allclose(a.norm(dim=-1), torch.ones(7), atol=1e-5)
    assert torch.allclose(a, b, atol=1e-6)
    texts = ["a red circle", "a red circle on the left and a blue square at the bottom"]
    t = tiny.encode_texts(texts, batch_size=1)
    assert torch.allclose(t, encode_texts(tiny, tiny.tokenize(texts)), atol=1e-6)
    assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_short_context_padding_keeps_eot_feature(tiny) -> None:
    """Tokens at length 16 zero-padded to the model's 32 give the same feature as tokenising at 32."""
    full = load_backbone("tiny-clip", None, context_length=32)
    full.model.load_state_dict(tiny.model.state_dict())
    texts = ["a small yellow star at the top right"]
    assert torch.allclose(tiny.encode_texts(texts), full.encode_texts(texts), atol=1e-6)
    assert pad_tokens(tiny.tokenize(texts), 32).shape == (1, 32)
    with pytest.raises(BackboneError, match="context_length"):
        load_backbone("tiny-clip", None, context_length=64)
