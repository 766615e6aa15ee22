"""Typed, frozen view of ``params.yaml``: a strict pydantic model per section, the one place for defaults
and allowed values (an int for a float key becomes a float; nothing else is coerced). A bad value raises
:class:`ParamsError`, one line naming the dotted key; :func:`load_params_or_exit` prints it, exits 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from discovla.errors import DiscoVLAError

PARAMS_FILE = "params.yaml"


class ParamsError(DiscoVLAError, ValueError):
    """A params.yaml problem, with a one-line message naming the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataParams(_Section):
    dataset: Literal["shapes", "folder", "msrvtt", "msvd", "didemo", "activitynet", "lsmdc"] = "shapes"
    root: str = "data/shapes"


class ShapesParams(_Section):
    seed: int = 42
    train_videos: int = Field(2000, ge=2)
    val_videos: int = Field(200, ge=2)
    test_videos: int = Field(500, ge=2)
    size: int = Field(64, ge=16, le=512)
    fps: int = Field(10, ge=1, le=60)
    seconds: float = Field(2.0, ge=0.5, le=60.0)
    train_captions: int = Field(4, ge=1, le=20)
    order_twin_fraction: float = Field(0.2, ge=0.0, le=1.0)
    content_twin_fraction: float = Field(0.3, ge=0.0, le=1.0)
    stills_train: int = Field(20000, ge=16)
    stills_val: int = Field(1000, ge=16)
    captions: Literal["narrative", "static"] = "narrative"


class FramesParams(_Section):
    num_frames: int = Field(8, ge=1, le=256)
    size: int = Field(32, ge=8, le=1024)
    workers: int = Field(2, ge=1, le=256)
    shard_rows: int = Field(50000, ge=1)
    max_fps: float = Field(0.0, ge=0.0, le=240.0)


class PretrainClipParams(_Section):
    seed: int = 42
    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.1, ge=0.0, le=10.0)
    warmup: float = Field(0.05, ge=0.0, le=1.0)


class PretrainCaptionerParams(_Section):
    seed: int = 42
    epochs: int = Field(6, ge=1, le=1000)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.01, ge=0.0, le=10.0)


class ModelParams(_Section):
    backbone: str = "tiny-clip"
    pretrained: str = "models/tiny-clip/open_clip_model.safetensors"
    context_length: int = Field(32, ge=4, le=77)


class CaptionerParams(_Section):
    model: str = "models/tiny-blip"
    max_new_tokens: int = Field(32, ge=1, le=128)
    num_beams: int = Field(1, ge=1, le=16)
    batch_size: int = Field(128, ge=1)


class FeaturesParams(_Section):
    batch_size: int = Field(256, ge=1)


class LoraParams(_Section):
    rank: int = Field(8, ge=0, le=256)


class FusionParams(_Section):
    enabled: bool = True
    vision_layers: int = Field(4, ge=0, le=48)
    text_layers: int = Field(2, ge=0, le=48)
    adapter_dim: int = Field(8, ge=1, le=1024)
    alpha: float = Field(0.3, ge=0.0, le=100.0)
    beta: float = Field(1.0, ge=0.0, le=100.0)
    detach_teacher: bool = False
    distill_scale: Literal["reference", "mean"] = "reference"
    temporal_position: bool = False


class TemporalParams(_Section):
    module: bool = False
    width: int = Field(64, ge=8, le=4096)
    layers: int = Field(1, ge=1, le=12)
    trends: int = Field(0, ge=0, le=8)
    order_weight: float = Field(0.0, ge=0.0, le=100.0)
    shuffled: bool = False


class TrainParams(_Section):
    seed: int = 42
    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(6e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(0.2, ge=0.0, le=10.0)
    beta1: float = Field(0.9, ge=0.0, le=1.0)
    beta2: float = Field(0.999, ge=0.0, le=1.0)
    eps: float = Field(1e-6, gt=0.0, le=1.0)
    warmup: float = Field(0.1, ge=0.0, le=1.0)
    grad_clip: float = Field(1.0, ge=0.0)
    sampling: Literal["pairs", "videos"] = "pairs"
    augment: Literal["none", "randaugment"] = "none"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    workers: int = Field(0, ge=0, le=64)
    activation_checkpointing: bool = False


class EvaluateParams(_Section):
    batch_size: int = Field(256, ge=1)
    chunk_size: int = Field(1024, ge=1)
    dsl: bool = True
    workers: int = Field(0, ge=0, le=64)


class ReportParams(_Section):
    queries: int = Field(6, ge=1, le=100)
    seed: int = 0
    strip_frames: int = Field(4, ge=1, le=64)


class EngineParams(_Section):
    """Which engine runs the per-video stages (frames, captions, index) and how Ray is reached and sized:
    ``local`` is this machine's process pool / device, ``ray`` the same code as a Ray Data pipeline
    (:mod:`discovla.ray_engine`)."""

    frames: Literal["local", "ray"] = "local"  # frame sampling: process pool | Ray Data CPU map
    captions: Literal["local", "ray"] = "local"  # BLIP captioning: one device | actor pool of captioners
    index: Literal["local", "ray"] = "local"  # the index stage's embedding: one device | actor pool
    address: str = ""  # Ray cluster ('ray://host:10001', 'auto'); '': $RAY_ADDRESS, else a local Ray
    num_cpus: int = Field(0, ge=0, le=4096)  # CPUs of a local Ray (0: all of this machine's)
    actors: int = Field(1, ge=1, le=4096)  # captioner / retriever actors (one model copy each)
    num_gpus: float = Field(0.0, ge=0.0, le=8.0)  # GPUs per actor (0: CPU actors)
    part_frames: int = Field(4096, ge=1)  # captions and index: frames per resumable part (whole batches)

    def uses_ray(self) -> bool:
        return "ray" in (self.frames, self.captions, self.index)


class Params(_Section):
    data: DataParams = Field(default_factory=DataParams)
    shapes: ShapesParams = Field(default_factory=ShapesParams)
    frames: FramesParams = Field(default_factory=FramesParams)
    pretrain_clip: PretrainClipParams = Field(default_factory=PretrainClipParams)
    pretrain_captioner: PretrainCaptionerParams = Field(default_factory=PretrainCaptionerParams)
    model: ModelParams = Field(default_factory=ModelParams)
    captioner: CaptionerParams = Field(default_factory=CaptionerParams)
    features: FeaturesParams = Field(default_factory=FeaturesParams)
    lora: LoraParams = Field(default_factory=LoraParams)
    fusion: FusionParams = Field(default_factory=FusionParams)
    temporal: TemporalParams = Field(default_factory=TemporalParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    report: ReportParams = Field(default_factory=ReportParams)
    engine: EngineParams = Field(default_factory=EngineParams)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_section(cls, value: Any) -> Any:  # ``fusion:`` with no keys parses as None: all defaults
        return {} if value is None else value


_WANT = dict(int="an integer", float="a number", bool="true or false", string="a string", model="a mapping")


def _at(loc: tuple[str, ...]) -> Any:  # the model, or a key's annotation, at a location under Params
    return _at(loc[:-1]).model_fields[loc[-1]].annotation if loc else Params


def _one_line(err: Any) -> str:  # a pydantic error as ``<dotted.key>: <what is wrong>, got <value>``
    loc, kind = tuple(str(part) for part in err["loc"]), err["type"]
    key, got = ".".join(loc) or "params", f", got {err.get('input')!r}"
    if kind == "extra_forbidden":
        return f"{key}: unknown key (allowed: {', '.join(_at(loc[:-1]).model_fields)})"
    if kind == "literal_error":
        return f"{key}: expected one of {', '.join(get_args(_at(loc)))}{got}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal"):
        meta = _at(loc[:-1]).model_fields[loc[-1]].metadata
        b = {k: v for m in meta for k in ("ge", "gt", "le") if (v := getattr(m, k, None)) is not None}
        if kind == "less_than_equal" and "ge" in b:
            return f"{key}: must be between {b['ge']} and {b['le']}{got}"
        low = f"> {b['gt']}" if "gt" in b else f">= {b['ge']}"
        return f"{key}: must be {low}" + (f" and <= {b['le']}" if "le" in b else "") + got
    what = _WANT.get(kind.split("_")[0])
    return f"{key}: expected {what}{got}" if what else f"{key}: {' '.join(err['msg'].split())}{got}"


def params_from_dict(raw: dict[str, Any] | None) -> Params:
    """Validate a parsed params mapping (missing sections and keys take the defaults above)."""
    try:
        return Params.model_validate({} if raw is None else raw)
    except ValidationError as exc:
        raise ParamsError(_one_line(exc.errors(include_url=False)[0])) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml``. Raises :class:`ParamsError` with a one-line message."""
    if not Path(path).exists():
        raise ParamsError("file not found (run from the repository root)")
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
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
