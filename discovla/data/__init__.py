"""Datasets: what every reader returns (:class:`VideoDataset`: videos with id, path and split; captions
with id, text and split) and what readers share; :mod:`discovla.data.registry` names the readers.

The on-disk ``folder`` form is the common currency: a directory ``videos/`` plus ``captions.csv`` with
columns ``video_id, caption, split``; the shapes world is written in it. MSRVTT is read from the
CLIP4Clip files; MSVD, DiDeMo, ActivityNet Captions and LSMDC from the files their authors release
(``docs/formats.md``). This module holds only what readers and the shapes world share, so adding a reader
changes nothing in the shapes world's code closure (its DVC deps).

The ``folder`` and ``msrvtt`` readers refuse a caption that is empty or only whitespace
(:func:`check_captions`: a :class:`DatasetError` naming the file and the row). The benchmark readers
(MSVD, DiDeMo, ActivityNet, LSMDC), whose released files really have such rows, skip them and record
each skip with its file, row and reason in :attr:`VideoDataset.skipped`; a caption is never silently
encoded as an empty string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from discovla.errors import DiscoVLAError

SPLITS = ("train", "val", "test")
SKIP_COLUMNS = ("file", "row", "video_id", "reason")


def no_skips() -> pd.DataFrame:
    """An empty skip table (columns :data:`SKIP_COLUMNS`)."""
    return pd.DataFrame({c: pd.Series(dtype=str) for c in SKIP_COLUMNS})


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
    ``skipped``: annotation rows the reader skipped, with columns :data:`SKIP_COLUMNS` (``row``: where in
    ``file``, as the file counts it; ``reason``: why).
    """

    name: str
    root: Path
    videos: pd.DataFrame
    captions: pd.DataFrame
    skipped: pd.DataFrame = field(default_factory=no_skips)

    def split(self, split: str) -> VideoDataset:
        return VideoDataset(
            self.name,
            self.root,
            self.videos[self.videos.split == split].reset_index(drop=True),
            self.captions[self.captions.split == split].reset_index(drop=True),
            self.skipped,
        )
