"""Datasets: a registry of readers that yield videos (id, path, split) and captions (id, text, split).

Every reader returns a :class:`VideoDataset`. The on-disk ``folder`` form is the common currency: a
directory ``videos/`` plus ``captions.csv`` with columns ``video_id, caption, split``. The shapes world
is written in that form; MSRVTT is read from the standard CLIP4Clip files.

Every reader checks its captions with :func:`check_captions`: a caption that is empty or only whitespace
is a :class:`DatasetError` naming the file and the row, never a silently encoded empty string.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from discovla.errors import DiscoVLAError

SPLITS = ("train", "val", "test")


class DatasetError(DiscoVLAError, ValueError):
    """A dataset directory that cannot be read, with what is wrong and what was expected."""


def check_captions(
    captions: pd.DataFrame, source: str | Path, row: str = "row {} after the header", first: int = 1
) -> None:
    """:class:`DatasetError` naming the first caption of ``captions`` that is empty or only whitespace.

    ``captions`` has columns ``video_id`` and ``caption``; its index is the 0-based position of each row
    in ``source``, named in the message as ``row.format(index + first)`` (rows filtered out before the
    check keep their position). A missing caption (None/NaN) counts as empty.
    """
    text = captions.caption.where(captions.caption.notna(), "").astype(str)
    empty = (text.str.strip() == "").to_numpy()
    if empty.any():
        i = captions.index[empty][0]
        raise DatasetError(
            f"{source}: {row.format(i + first)}: the caption of video {captions.video_id[i]!r} is empty or "
            f"only whitespace ({int(empty.sum())} such caption(s) in all): write a caption or remove the row"
        )


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
