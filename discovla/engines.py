"""Which engine runs the per-video stages (``frames``, ``captions``, ``index``): the ``engine`` params.

``local`` (the default) is the machine's own process pool / device; ``ray`` runs the same code as a Ray
Data pipeline (:mod:`discovla.ray_engine`) on a local Ray or a cluster. The section lives in
``engine.yaml`` (section ``engine``), not in ``params.yaml``: :class:`discovla.config.Params` forbids
unknown top-level sections, so an ``engine:`` section in params.yaml would stop every other stage until
``Params`` gains an ``engine: EngineParams`` field. Only pydantic is imported here, so that field can be
added to :mod:`discovla.config` without a cycle.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from discovla.errors import DiscoVLAError

ENGINE_FILE = "engine.yaml"
SECTION = "engine"

Engine = Literal["local", "ray"]


class EngineError(DiscoVLAError, ValueError):
    """An engine.yaml problem (one line naming the key), or Ray missing when the ray engine is asked for."""


class EngineParams(BaseModel):
    """``engine`` params: which stages run on Ray, and how Ray is reached and sized."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    frames: Engine = "local"  # frame sampling: process pool | Ray Data CPU map
    captions: Engine = "local"  # BLIP captioning: one device | Ray Data actor pool of captioners
    index: Engine = "local"  # the index stage's embedding: one device | Ray Data actor pool of retrievers
    address: str = ""  # Ray cluster ('ray://host:10001', 'auto'); '' : $RAY_ADDRESS, else a local Ray
    num_cpus: int = Field(0, ge=0, le=4096)  # CPUs of a local Ray (0: all of this machine's)
    actors: int = Field(1, ge=1, le=4096)  # captioner / retriever actors (one model copy each)
    num_gpus: float = Field(0.0, ge=0.0, le=8.0)  # GPUs per actor (0: CPU actors)
    part_frames: int = Field(4096, ge=1)  # captions: frames per resumable part (whole batches)

    def uses_ray(self) -> bool:
        return "ray" in (self.frames, self.captions, self.index)


def _one_line(err: Any) -> str:
    key = ".".join([SECTION, *(str(p) for p in err["loc"])])
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key (allowed: {', '.join(EngineParams.model_fields)})"
    return f"{key}: {' '.join(err['msg'].split())}, got {err.get('input')!r}"


def engine_from_dict(raw: dict[str, Any] | None) -> EngineParams:
    """Validate the ``engine`` section (None: all defaults). Raises :class:`EngineError`, one line."""
    try:
        return EngineParams.model_validate({} if raw is None else raw)
    except ValidationError as exc:
        raise EngineError(_one_line(exc.errors(include_url=False)[0])) from None


def load_engine_params(path: str | Path = ENGINE_FILE) -> EngineParams:
    """The ``engine`` section of ``path``; all defaults (every stage local) when the file is absent."""
    path = Path(path)
    if not path.exists():
        return EngineParams()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise EngineError(f"{path}: is not valid YAML") from None
    if not isinstance(raw, dict) or set(raw) - {SECTION}:
        raise EngineError(f"{path}: expected one section, {SECTION}:")
    section = raw.get(SECTION)
    if section is not None and not isinstance(section, dict):
        raise EngineError(f"{path}: {SECTION}: expected a mapping")
    return engine_from_dict(section)


def load_engine_params_or_exit(path: str | Path = ENGINE_FILE) -> EngineParams:
    """:func:`load_engine_params` for stage scripts: a bad file prints one line and exits with status 2."""
    try:
        return load_engine_params(path)
    except EngineError as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
