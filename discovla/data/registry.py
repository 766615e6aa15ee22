"""The dataset registry: every reader by name, with its :class:`DatasetInfo` (splits, test protocol, the
papers' frames and context length, files and their source), and :func:`load_dataset`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discovla.data import DatasetError, VideoDataset


@dataclass(frozen=True)
class DatasetInfo:
    """What ``discovla datasets`` says about a dataset: its splits and test protocol, the frames and text
    context length the papers use with it (``preset``: the params that apply them), and its files."""

    summary: str
    splits: str
    protocol: str
    frames: int
    context_length: int
    files: str
    source: str
    preset: dict[str, Any] = field(default_factory=dict)

    def preset_command(self, name: str, root: str) -> str:
        """The ``dvc exp run`` line that runs the pipeline on this dataset with the papers' settings."""
        sets = {"data.dataset": name, "data.root": root, **self.preset}
        return "dvc exp run " + " ".join(f"-S {k}={v}" for k, v in sets.items())


Reader = Callable[[Path], VideoDataset]
_REGISTRY: dict[str, Reader] = {}
_INFO: dict[str, DatasetInfo] = {}


def register(name: str, info: DatasetInfo | None = None) -> Callable[[Reader], Reader]:
    def deco(fn: Reader) -> Reader:
        _REGISTRY[name] = fn
        if info is not None:
            _INFO[name] = info
        return fn

    return deco


def _register_all() -> None:
    from discovla.data import activitynet, didemo, folder, lsmdc, msrvtt, msvd  # noqa: F401  (registration)


def available() -> list[str]:
    _register_all()
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of dataset ``name``."""
    _register_all()
    if name not in _INFO:
        raise DatasetError(f"unknown dataset {name!r} (available: {', '.join(available())})")
    return _INFO[name]


def load_dataset(name: str, root: str | Path) -> VideoDataset:
    """Read dataset ``name`` (``discovla datasets`` lists them) from ``root``."""
    _register_all()
    if name not in _REGISTRY:
        raise DatasetError(f"unknown dataset {name!r} (available: {', '.join(available())})")
    return _REGISTRY[name](Path(root))
