"""Building open_clip CLIP models: configs, random init, pretrained tags and local checkpoint files.

- A model ``name`` is an open_clip model name (``ViT-B-16``, ``ViT-B-32``, ...) or the name of a JSON config
  in ``discovla/configs`` (``tiny-clip``). Our configs are plain open_clip model configs (data, no model
  code): they are registered with ``open_clip.add_model_config``.
- ``pretrained`` is an open_clip pretrained tag (``openai``), a local checkpoint file, or ``None`` (random
  init). Local files: ``.safetensors`` (preferred), or ``.pt``/``.bin``/``.pth`` state dicts loaded with
  ``torch.load(weights_only=True)`` (no arbitrary unpickling). An OpenAI TorchScript archive (the original
  ``ViT-B-16.pt``) is read with ``torch.jit.load`` and only its tensors are kept. If an
  ``open_clip_config.json`` lies next to the checkpoint (open_clip's hub layout, and ours in
  ``models/tiny-clip``), its ``quick_gelu`` flag and preprocessing mean/std are used; OpenAI TorchScript
  archives always use QuickGELU.
- Activation: a tag whose open_clip pretrained cfg says ``quick_gelu`` (every ``openai`` tag: OpenAI trained
  CLIP with ``x * sigmoid(1.702 x)``) builds the towers with QuickGELU (:func:`quick_gelu_for`); open_clip's
  plain ``ViT-B-16`` config would otherwise build ``nn.GELU`` MLPs and only warn. Local files follow their
  sibling config / TorchScript format as above.
- Tags need a download. Offline, or when the download fails, :class:`BackboneUnavailable` says in one line
  which file to fetch and to set ``model.pretrained: /path/to/file``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import save_file

from discovla.errors import DiscoVLAError
from discovla.io import atomic_dir
from discovla.runtime import hub_offline

CONFIG_DIR = Path(__file__).parent / "configs"
HF_SAFE_WEIGHTS = "open_clip_model.safetensors"
CHECKPOINT_CONFIG = "open_clip_config.json"

_TORCHSCRIPT_KEYS = ("input_resolution", "context_length", "vocab_size")


class BackboneError(DiscoVLAError, RuntimeError):
    """A backbone that cannot be built from the given name / checkpoint (message says what to fix)."""


class BackboneUnavailable(BackboneError):
    """Pretrained weights that need a download which is not possible here (offline or failed)."""


_registered = False


def register_configs() -> None:
    """Register ``discovla/configs/*.json`` with open_clip (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def local_config_names() -> list[str]:
    """Names of the model configs shipped in ``discovla/configs``."""
    names = []
    for path in sorted(CONFIG_DIR.glob("*.json")):
        cfg = json.loads(path.read_text())
        if all(key in cfg for key in ("embed_dim", "vision_cfg", "text_cfg")):
            names.append(path.stem)
    return names


def model_config(name: str) -> dict[str, Any]:
    """The open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) of ``name``."""
    register_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise BackboneError(
            f"unknown backbone {name!r}: use an open_clip model name (e.g. ViT-B-16, ViT-B-32) "
            f"or one of discovla/configs: {', '.join(local_config_names())}"
        )
    return cfg


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Silence open_clip's root-logger messages (random-init warning, download errors): we report our own."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Tensors of a checkpoint file, and whether it was an OpenAI TorchScript archive."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu"), False
    if _is_torchscript(path):
        module = torch.jit.load(str(path), map_location="cpu")
        state = {k: v for k, v in module.state_dict().items() if k not in _TORCHSCRIPT_KEYS}
        return state, True
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a plain tensor checkpoint"
        raise BackboneError(
            f"{path}: not a loadable weights-only checkpoint ({type(exc).__name__}); "
            f"convert it to .safetensors (safetensors.torch.save_file(state_dict, ...))"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}, False


def _sibling_config(path: Path) -> dict[str, Any]:
    cfg_path = path.parent / CHECKPOINT_CONFIG
    if not cfg_path.is_file():
        return {}
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError:
        raise BackboneError(f"{cfg_path}: not valid JSON") from None


@contextlib.contextmanager
def _honour_offline(offline: bool) -> Iterator[None]:
    """Make huggingface_hub honour an offline flag set after it was imported (cache-only look-ups)."""
    import huggingface_hub.constants as hub_constants

    previous = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = previous or offline
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = previous


def _url_cached(url: str) -> bool:
    """Whether open_clip's URL download cache (``~/.cache/clip``) already holds ``url``'s file."""
    return bool(url) and (Path("~/.cache/clip").expanduser() / os.path.basename(url)).is_file()


def _download_hint(name: str, tag: str) -> str:
    cfg = open_clip.get_pretrained_cfg(name, tag)
    where = []
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)  # open_clip: "org/repo/" (default file) or "org/repo/file"
        filename = filename or HF_SAFE_WEIGHTS
        where.append(
            f"{filename} (+ {CHECKPOINT_CONFIG}) from https://huggingface.co/{repo} (hf-hub repo {repo})"
        )
    if cfg.get("url"):
        where.append(cfg["url"])
    return " or ".join(where) if where else "the checkpoint file"


def quick_gelu_for(name: str, tag: str | None) -> bool:
    """Whether backbone ``name`` with open_clip pretrained tag ``tag`` (``None``: none) uses QuickGELU.

    True when the tag's pretrained cfg has ``quick_gelu`` (all ``openai`` tags) or the model config itself
    has it (``*-quickgelu`` names). Needs no weights and no network.
    """
    cfg = model_config(name)
    tag_cfg = open_clip.get_pretrained_cfg(name, tag) if tag else {}
    return bool(tag_cfg.get("quick_gelu", False) or cfg.get("quick_gelu", False))


def build_model(name: str, quick_gelu: bool = False, device: str | torch.device = "cpu") -> open_clip.CLIP:
    """A randomly initialised, trainable open_clip CLIP of config ``name`` (for pretraining)."""
    return _create(name, quick_gelu, device)


_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "zeros_", "ones_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)  # fmt: skip


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """``torch.nn.init``'s in-place initialisers do nothing inside the block: a model whose every weight is
    about to be loaded is built without spending seconds drawing random ones (2 s for ViT-B/16 on a CPU
    core). The same idea as ``transformers``' ``no_init_weights``, without importing it."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    for name in saved:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def _create(
    name: str,
    quick_gelu: bool,
    device: str | torch.device,
    pretrained: str | None = None,
    init: bool = True,
) -> open_clip.CLIP:
    """The one open_clip creation path: random init (``pretrained=None``) or an open_clip tag;
    ``init=False``: weights left uninitialised, for a caller that loads every one of them."""
    model_config(name)  # clear error for unknown names
    with _quiet_open_clip(), contextlib.nullcontext() if init else _skip_init():
        model = open_clip.create_model(
            name, pretrained=pretrained, force_quick_gelu=quick_gelu, device=device
        )
    if not isinstance(model, open_clip.CLIP):
        raise BackboneError(
            f"backbone {name!r} is a {type(model).__name__}: only open_clip CLIP models with the "
            f"OpenAI-style text transformer are supported (e.g. ViT-B-16, ViT-B-32)"
        )
    return model


def _load_tag(name: str, tag: str, device: str | torch.device) -> open_clip.CLIP:
    model_config(name)
    if not open_clip.get_pretrained_cfg(name, tag):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise BackboneError(
            f"model.pretrained: {tag!r} is neither a file nor an open_clip tag of {name} (tags: {tags})"
        )
    unavailable = BackboneUnavailable(
        f"weights {name}/{tag} cannot be downloaded here (offline or no network): download "
        f"{_download_hint(name, tag)} "
        f"and set `model.pretrained: /path/to/file` in params.yaml"
    )
    cfg = open_clip.get_pretrained_cfg(name, tag)
    offline = hub_offline()
    if offline and not cfg.get("hf_hub") and not _url_cached(cfg.get("url", "")):
        raise unavailable
    try:
        with _honour_offline(offline):
            return _create(name, quick_gelu_for(name, tag), device, pretrained=tag)
    except BackboneError:
        raise
    except Exception:  # noqa: BLE001 - download failures come in many types
        raise unavailable from None


def _load_file(name: str, path: Path, device: str | torch.device) -> tuple[open_clip.CLIP, dict[str, Any]]:
    state, torchscript = _read_state_dict(path)
    sibling = _sibling_config(path)
    quick_gelu = True if torchscript else bool(sibling.get("model_cfg", {}).get("quick_gelu", False))
    model = _create(name, quick_gelu, "cpu", init=False)  # every weight is loaded below (strict)
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    problem = _state_mismatch(model.state_dict(), state)
    if problem:
        raise BackboneError(f"{path} does not match backbone {name!r}: {problem}")
    model.load_state_dict(state, strict=True)
    return model.to(device), sibling.get("preprocess_cfg", {})


def _state_mismatch(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> str:
    """One-line summary of missing / unexpected / reshaped keys ('' when the checkpoint fits)."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [
        f"{k} {tuple(got[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in got and got[k].shape != expected[k].shape
    ]
    parts = [
        f"{len(keys)} {what} (e.g. {', '.join(keys[:2])})"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if keys
    ]
    return "; ".join(parts)


def create_clip(
    name: str, pretrained: str | None, device: str | torch.device = "cpu"
) -> tuple[open_clip.CLIP, dict[str, Any]]:
    """Model ``name`` with weights from ``pretrained`` (tag, local file, or ``None``/``""``: random init),
    and the preprocessing (mean/std) override of a local checkpoint's sibling config (else ``{}``)."""
    if pretrained is None or pretrained == "":
        return _create(name, False, device), {}
    if Path(pretrained).is_file():
        return _load_file(name, Path(pretrained), device)
    if Path(pretrained).suffix in (".safetensors", ".pt", ".bin", ".pth") or os.sep in pretrained:
        raise BackboneError(f"model.pretrained: checkpoint file {pretrained} not found")
    return _load_tag(name, pretrained, device), {}


def save_clip(model: open_clip.CLIP, name: str, out_dir: str | Path, extra: dict[str, Any]) -> None:
    """Write ``model`` in open_clip's local layout, the one :func:`create_clip` reads back from a file:
    ``open_clip_model.safetensors`` + ``open_clip_config.json`` (model config, preprocessing, ``extra``).
    Nothing run-dependent (timings, metadata order) goes in, so the same weights give the same bytes."""
    pre = model.visual.preprocess_cfg
    config = {
        "model_cfg": model_config(name),
        "preprocess_cfg": {
            "mean": list(pre["mean"]),
            "std": list(pre["std"]),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
        "name": name,
        **extra,
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_dir(out_dir) as tmp:
        # one metadata key: safetensors writes a metadata mapping in hash order, so two keys could swap
        # places between runs and the same weights would give different bytes
        save_file(state, str(tmp / HF_SAFE_WEIGHTS), metadata={"format": "pt"})
        (tmp / CHECKPOINT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
