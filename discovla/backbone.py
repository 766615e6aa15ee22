"""Frozen CLIP backbones: open_clip models by name, with weights from a tag, a local file, or random init.

``load_backbone(name, pretrained)`` builds an open_clip ``CLIP``:

- ``name`` is an open_clip model name (``ViT-B-16``, ``ViT-B-32``, ...) or the name of a JSON config in
  ``discovla/configs`` (``tiny-clip``). Our configs are plain open_clip model configs (data, no model
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

The returned :class:`Backbone` is in eval mode with every parameter frozen. Texts are tokenised with
open_clip's BPE tokenizer at the pipeline's context length (``model.context_length``), which may be shorter
than the model's positional table (32 for ViT-B, like the reference code): :func:`encode_texts` pads the
tokens with zeros to the model's length, which leaves the causal-attention EOT feature unchanged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from discovla.errors import DiscoVLAError

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


def _offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE as set now (huggingface_hub reads them only at import)."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
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


def _create(
    name: str, quick_gelu: bool, device: str | torch.device, pretrained: str | None = None
) -> open_clip.CLIP:
    """The one open_clip creation path: random init (``pretrained=None``) or an open_clip tag."""
    model_config(name)  # clear error for unknown names
    with _quiet_open_clip():
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
    offline = _offline()
    if offline and not cfg.get("hf_hub") and not _url_cached(cfg.get("url", "")):
        raise unavailable
    try:
        with _hub_offline(offline):
            return _create(name, quick_gelu_for(name, tag), device, pretrained=tag)
    except BackboneError:
        raise
    except Exception:  # noqa: BLE001 - download failures come in many types
        raise unavailable from None


def _load_file(name: str, path: Path, device: str | torch.device) -> tuple[open_clip.CLIP, dict[str, Any]]:
    state, torchscript = _read_state_dict(path)
    sibling = _sibling_config(path)
    quick_gelu = True if torchscript else bool(sibling.get("model_cfg", {}).get("quick_gelu", False))
    model = _create(name, quick_gelu, "cpu")
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


def load_backbone(
    name: str, pretrained: str | None, device: str | torch.device = "cpu", context_length: int | None = None
) -> Backbone:
    """Build a frozen open_clip CLIP; see the module docstring for ``name`` and ``pretrained``.

    ``context_length`` (the pipeline's ``model.context_length``) sets the tokenizer's length; ``None``
    uses the model's own. It may not exceed the model's positional table.
    Raises :class:`BackboneUnavailable` when a tag cannot be downloaded, :class:`BackboneError` otherwise.
    """
    preprocess_override: dict[str, Any] = {}
    if pretrained is None or pretrained == "":
        model = _create(name, False, device)
    elif Path(pretrained).is_file():
        model, preprocess_override = _load_file(name, Path(pretrained), device)
    elif Path(pretrained).suffix in (".safetensors", ".pt", ".bin", ".pth") or os.sep in pretrained:
        raise BackboneError(f"model.pretrained: checkpoint file {pretrained} not found")
    else:
        model = _load_tag(name, pretrained, device)
    model.eval()
    model.requires_grad_(False)
    pre = {**open_clip.get_model_preprocess_cfg(model), **preprocess_override}
    model_ctx = int(model.context_length)
    ctx = model_ctx if context_length is None else int(context_length)
    if not 2 <= ctx <= model_ctx:
        raise BackboneError(f"model.context_length: must be between 2 and {model_ctx} for {name}, got {ctx}")
    size = model.visual.image_size
    return Backbone(
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
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x.float() / 255.0 - m) / s


def pad_tokens(tokens: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad ``[N, L]`` tokens to ``[N, length]`` (open_clip's pad id is 0; the EOT stays in place)."""
    if tokens.shape[1] > length:
        raise ValueError(f"tokens have {tokens.shape[1]} positions, the text tower has only {length}")
    return F.pad(tokens, (0, length - tokens.shape[1])) if tokens.shape[1] < length else tokens


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _encode(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int, dim: int):
    out = [fn(x[sl]).float().cpu() for sl in _batches(len(x), batch_size)]
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
