"""Backbone loading: tiny config, local checkpoints, the offline message, preprocessing and encoders."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings

import numpy as np
import open_clip
import open_clip.factory
import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from discovla import backbone
from discovla.backbone import (
    BackboneError,
    BackboneUnavailable,
    encode_texts,
    load_backbone,
    pad_tokens,
    preprocess_uint8,
    quick_gelu_for,
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
    assert all(isinstance(a, QuickGELU) for a in _mlp_activations(loaded.model))


def _mlp_activations(model: open_clip.CLIP) -> list[torch.nn.Module]:
    towers = (model.visual.transformer, model.transformer)
    return [block.mlp.gelu for tower in towers for block in tower.resblocks]


def test_quick_gelu_decision_needs_no_weights() -> None:
    assert quick_gelu_for("ViT-B-16", "openai") and quick_gelu_for("ViT-B-32", "openai")
    assert not quick_gelu_for("ViT-B-16", "laion2b_s34b_b88k")  # trained with nn.GELU
    assert not quick_gelu_for("ViT-B-16", None) and not quick_gelu_for("tiny-clip", None)
    assert quick_gelu_for("ViT-B-16-quickgelu", None)  # the model config itself says so


def test_openai_tag_builds_quickgelu_towers_without_warning(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    # The real tag path, minus the download: open_clip gets no checkpoint file and keeps its random init
    # (open_clip still checks the tag's quick_gelu against the model's and warns on a mismatch).
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda *args, **kwargs: "")
    monkeypatch.setattr(backbone, "_quiet_open_clip", contextlib.nullcontext)  # see every open_clip log
    caplog.set_level(logging.DEBUG)

    def build() -> tuple[open_clip.CLIP, list[str]]:
        caplog.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = backbone._load_tag("ViT-B-16", "openai", "cpu")
        return model, [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]

    model, messages = build()
    acts = _mlp_activations(model)
    assert len(acts) == 24 and all(isinstance(a, QuickGELU) for a in acts)
    assert not any(isinstance(m, torch.nn.GELU) for m in model.modules())
    assert not [m for m in messages if "gelu" in m.lower()], messages
    del model
    # Control: deciding GELU for the openai tag is what open_clip warns about (so the check above can fail).
    monkeypatch.setattr(backbone, "quick_gelu_for", lambda name, tag: False)
    model, messages = build()
    assert all(isinstance(a, torch.nn.GELU) for a in _mlp_activations(model))
    assert [m for m in messages if "quickgelu" in m.lower()], messages


def _torchscript_archive(state: dict[str, torch.Tensor]) -> torch.jit.ScriptModule:
    """A TorchScript module holding ``state`` under the same names, like OpenAI's ``ViT-B-16.pt``."""
    root = torch.nn.Module()
    for key, value in state.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, value.clone())
    return torch.jit.script(root)


def test_local_torchscript_checkpoint_uses_quickgelu(tmp_path) -> None:
    source = load_backbone("tiny-clip", None)
    assert all(isinstance(a, torch.nn.GELU) for a in _mlp_activations(source.model))
    state = {**source.model.state_dict(), "input_resolution": torch.tensor(32)}
    path = tmp_path / "ViT-B-16.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; OpenAI's files are jit
        _torchscript_archive(state).save(str(path))
        loaded = load_backbone("tiny-clip", str(path))
    assert all(isinstance(a, QuickGELU) for a in _mlp_activations(loaded.model))
    for key, value in source.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


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
