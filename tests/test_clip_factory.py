"""Building CLIP models: names, tags (offline messages, QuickGELU), local checkpoint files."""

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

from discovla import clip_factory
from discovla.backbone import load_backbone
from discovla.clip_factory import BackboneError, BackboneUnavailable, quick_gelu_for


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


def test_local_safetensors_roundtrip(tiny_backbone, tmp_path) -> None:
    torch.manual_seed(1)
    source = load_backbone("tiny-clip", None, context_length=16)
    with torch.no_grad():
        source.model.logit_scale.fill_(3.0)
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    loaded = load_backbone("tiny-clip", str(path), context_length=16)
    images = torch.randint(
        0, 256, (5, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    texts = ["a red circle on the left", "a blue square", "x", "", "two green triangles"]
    assert torch.equal(loaded.encode_images(images), source.encode_images(images))
    assert torch.equal(loaded.encode_texts(texts), source.encode_texts(texts))
    assert not torch.allclose(tiny_backbone.encode_images(images), loaded.encode_images(images))
    assert loaded.logit_scale == pytest.approx(np.exp(3.0), rel=1e-5)
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_loading_a_checkpoint_draws_no_random_weights(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every weight comes from the file: building the model first skips torch.nn.init's initialisers (their
    draws would be overwritten), and leaves them as they were."""
    torch.manual_seed(2)
    source = load_backbone("tiny-clip", None, context_length=16).model
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    calls: list[str] = []
    for name in clip_factory._INIT_FUNCTIONS:
        real = getattr(torch.nn.init, name)
        monkeypatch.setattr(
            torch.nn.init, name, lambda t, *a, _n=name, _f=real, **k: calls.append(_n) or _f(t, *a, **k)
        )
    spies = {name: getattr(torch.nn.init, name) for name in clip_factory._INIT_FUNCTIONS}
    loaded = load_backbone("tiny-clip", str(path), context_length=16).model
    assert calls == []  # no initialiser ran
    assert {name: getattr(torch.nn.init, name) for name in spies} == spies  # and they are back
    got, want = loaded.state_dict(), source.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert torch.equal(loaded.attn_mask, source.attn_mask)  # non-persistent: computed, not loaded
    load_backbone("tiny-clip", None, context_length=16)
    assert "normal_" in calls  # random init still initialises


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
    monkeypatch.setattr(clip_factory, "_quiet_open_clip", contextlib.nullcontext)  # see every open_clip log
    caplog.set_level(logging.DEBUG)

    def build() -> tuple[open_clip.CLIP, list[str]]:
        caplog.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = clip_factory._load_tag("ViT-B-16", "openai", "cpu")
        return model, [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]

    model, messages = build()
    acts = _mlp_activations(model)
    assert len(acts) == 24 and all(isinstance(a, QuickGELU) for a in acts)
    assert not any(isinstance(m, torch.nn.GELU) for m in model.modules())
    assert not [m for m in messages if "gelu" in m.lower()], messages
    del model
    # Control: deciding GELU for the openai tag is what open_clip warns about (so the check above can fail).
    monkeypatch.setattr(clip_factory, "quick_gelu_for", lambda name, tag: False)
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


def test_saving_the_same_weights_gives_the_same_bytes(tmp_path) -> None:
    from discovla.clip_factory import build_model, save_clip

    torch.manual_seed(0)
    model = build_model("tiny-clip")
    blobs = set()
    for i in range(8):  # safetensors writes a metadata mapping in hash order: a second key could move
        save_clip(model, "tiny-clip", tmp_path / f"m{i}", {"context_length": 16})
        blobs.add((tmp_path / f"m{i}" / "open_clip_model.safetensors").read_bytes())
    assert len(blobs) == 1
