"""Datasets: a registry of readers that yield videos (id, path, split) and captions (id, text, split).

Every reader returns a :class:`VideoDataset`. The on-disk ``folder`` form is the common currency: a
directory ``videos/`` plus ``captions.csv`` with columns ``video_id, caption, split``. The shapes world
is written in that form; MSRVTT is read from the standard CLIP4Clip files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """A dataset directory that cannot be read, with what is wrong and what was expected."""


@dataclass(frozen=True)
class VideoDataset:
    """Videos and captions of one dataset.

    ``videos``: DataFrame with columns ``video_id`` (str), ``path`` (str), ``split`` (train/val/test).
    ``captions``: DataFrame with columns ``caption_id`` (int, unique), ``video_id``, ``caption``, ``split``.
    """

    name: str
    root: Path
    videos: pd.DataFrame
    captions: pd.DataFrame

    def split(self, split: str) -> VideoDataset:
        return VideoDataset(
            self.name,
            self.root,
            self.videos[self.videos.split == split].reset_index(drop=True),
            self.captions[self.captions.split == split].reset_index(drop=True),
        )


Reader = Callable[[Path], VideoDataset]
_REGISTRY: dict[str, Reader] = {}


def register(name: str) -> Callable[[Reader], Reader]:
    def deco(fn: Reader) -> Reader:
        _REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def load_dataset(name: str, root: str | Path) -> VideoDataset:
    """Read dataset ``name`` (``folder``, ``shapes``, ``msrvtt``) from ``root``."""
    from discovla.data import folder, msrvtt  # noqa: F401  (registration)

    if name not in _REGISTRY:
        raise DatasetError(f"unknown dataset {name!r} (available: {', '.join(available())})")
    return _REGISTRY[name](Path(root))
