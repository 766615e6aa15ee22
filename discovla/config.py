"""Typed, frozen, validated view of ``params.yaml``.

Every section of ``params.yaml`` is a frozen dataclass. :func:`load_params` reads the file and checks
every key: an unknown key, a wrong type or an out-of-range value raises :class:`ParamsError` with one
line that names the key and what is allowed. Stage scripts call :func:`load_params_or_exit`, which turns
that error into one line on stderr and exit status 2 (no traceback).

Constraints live in field metadata: ``rng(lo, hi)`` for numbers (inclusive, ``None`` = unbounded) and
``one_of(...)`` for strings.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from discovla.errors import DiscoVLAError

PARAMS_FILE = "params.yaml"


class ParamsError(DiscoVLAError, ValueError):
    """A params.yaml problem, with a one-line message naming the key."""


def rng(default: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Any:
    return field(default=default, metadata={"lo": lo, "hi": hi, "lo_open": lo_open})


def one_of(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": choices})


@dataclass(frozen=True)
class DataParams:
    dataset: str = one_of("shapes", "shapes", "folder", "msrvtt")
    root: str = "data/shapes"


@dataclass(frozen=True)
class ShapesParams:
    seed: int = 42
    train_videos: int = rng(2000, 2)
    val_videos: int = rng(200, 2)
    test_videos: int = rng(500, 2)
    size: int = rng(64, 16, 512)
    fps: int = rng(10, 1, 60)
    seconds: float = rng(2.0, 0.5, 60.0)
    train_captions: int = rng(4, 1, 20)
    order_twin_fraction: float = rng(0.2, 0.0, 1.0)
    content_twin_fraction: float = rng(0.3, 0.0, 1.0)
    stills_train: int = rng(20000, 16)
    stills_val: int = rng(1000, 16)


@dataclass(frozen=True)
class FramesParams:
    num_frames: int = rng(8, 1, 256)
    size: int = rng(32, 8, 1024)
    workers: int = rng(2, 1, 256)
    shard_rows: int = rng(50000, 1)
    max_fps: float = rng(0.0, 0.0, 240.0)


@dataclass(frozen=True)
class PretrainClipParams:
    seed: int = 42
    epochs: int = rng(10, 1, 1000)
    batch_size: int = rng(256, 2)
    lr: float = rng(2e-3, 0.0, 1.0, lo_open=True)
    weight_decay: float = rng(0.1, 0.0, 10.0)
    warmup: float = rng(0.05, 0.0, 1.0)


@dataclass(frozen=True)
class PretrainCaptionerParams:
    seed: int = 42
    epochs: int = rng(6, 1, 1000)
    batch_size: int = rng(32, 1)
    lr: float = rng(1e-3, 0.0, 1.0, lo_open=True)
    weight_decay: float = rng(0.01, 0.0, 10.0)


@dataclass(frozen=True)
class ModelParams:
    backbone: str = "tiny-clip"
    pretrained: str = "models/tiny-clip/open_clip_model.safetensors"
    context_length: int = rng(32, 4, 77)


@dataclass(frozen=True)
class CaptionerParams:
    model: str = "models/tiny-blip"
    max_new_tokens: int = rng(32, 1, 128)
    num_beams: int = rng(1, 1, 16)
    batch_size: int = rng(128, 1)


@dataclass(frozen=True)
class FeaturesParams:
    batch_size: int = rng(256, 1)


@dataclass(frozen=True)
class LoraParams:
    rank: int = rng(8, 0, 256)


@dataclass(frozen=True)
class FusionParams:
    enabled: bool = True
    vision_layers: int = rng(4, 0, 48)
    text_layers: int = rng(2, 0, 48)
    adapter_dim: int = rng(8, 1, 1024)
    alpha: float = rng(0.3, 0.0, 100.0)
    beta: float = rng(1.0, 0.0, 100.0)
    detach_teacher: bool = False
    distill_scale: str = one_of("reference", "reference", "mean")
    temporal_position: bool = False


@dataclass(frozen=True)
class TrainParams:
    seed: int = 42
    epochs: int = rng(5, 1, 1000)
    batch_size: int = rng(32, 2)
    lr: float = rng(6e-4, 0.0, 1.0, lo_open=True)
    weight_decay: float = rng(0.2, 0.0, 10.0)
    beta1: float = rng(0.9, 0.0, 1.0)
    beta2: float = rng(0.999, 0.0, 1.0)
    eps: float = rng(1e-6, 0.0, 1.0, lo_open=True)
    warmup: float = rng(0.1, 0.0, 1.0)
    grad_clip: float = rng(1.0, 0.0, None)
    sampling: str = one_of("pairs", "pairs", "videos")
    augment: str = one_of("none", "none", "randaugment")
    device: str = one_of("auto", "auto", "cpu", "cuda")
    precision: str = one_of("auto", "auto", "fp32", "bf16")


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = rng(256, 1)
    chunk_size: int = rng(1024, 1)
    dsl: bool = True


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    shapes: ShapesParams = field(default_factory=ShapesParams)
    frames: FramesParams = field(default_factory=FramesParams)
    pretrain_clip: PretrainClipParams = field(default_factory=PretrainClipParams)
    pretrain_captioner: PretrainCaptionerParams = field(default_factory=PretrainCaptionerParams)
    model: ModelParams = field(default_factory=ModelParams)
    captioner: CaptionerParams = field(default_factory=CaptionerParams)
    features: FeaturesParams = field(default_factory=FeaturesParams)
    lora: LoraParams = field(default_factory=LoraParams)
    fusion: FusionParams = field(default_factory=FusionParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _check_value(key: str, tp: Any, meta: Any, value: Any) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{key}: expected a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {value!r}")
        choices = meta.get("choices")
        if choices and value not in choices:
            raise ParamsError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
        return value
    lo, hi, lo_open = meta.get("lo"), meta.get("hi"), meta.get("lo_open", False)
    if lo is not None and (value < lo or (lo_open and value == lo)):
        bound = f"> {lo}" if lo_open else f">= {lo}"
        allowed = f"{bound} and <= {hi}" if hi is not None else bound
        raise ParamsError(f"{key}: must be {allowed}, got {value!r}")
    if hi is not None and value > hi:
        allowed = f"between {lo} and {hi}" if lo is not None else f"<= {hi}"
        raise ParamsError(f"{key}: must be {allowed}, got {value!r}")
    return value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{prefix or 'params'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ParamsError(f"{key}: unknown key (allowed: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw.get(name), key)
        elif name in raw:
            kwargs[name] = _check_value(key, tp, f.metadata, raw[name])
    return cls(**kwargs)


def params_from_dict(raw: dict[str, Any]) -> Params:
    """Validate a parsed params mapping (missing keys take the defaults above)."""
    return _build(Params, raw, "")


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml``. Raises :class:`ParamsError` with a one-line message."""
    path = Path(path)
    if not path.exists():
        raise ParamsError("file not found (run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ParamsError(f"{where}is not valid YAML") from None
    return params_from_dict(raw)


def load_params_or_exit(path: str | Path = PARAMS_FILE) -> Params:
    """:func:`load_params` for stage scripts: a bad file prints one line and exits with status 2."""
    try:
        return load_params(path)
    except ParamsError as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
