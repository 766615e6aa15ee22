"""The dataset registry: every reader by name, with its :class:`~discovla.data.info.DatasetInfo` (splits,
test protocol, the papers' frames and context length, files and their source), and :func:`load_dataset`.

The reader modules import nothing from here: adding one is one line in :data:`READERS`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from discovla.data import DatasetError, VideoDataset, activitynet, didemo, folder, lsmdc, msrvtt, msvd
from discovla.data.info import DatasetInfo

Reader = Callable[[Path], VideoDataset]
READERS: dict[str, tuple[Reader, DatasetInfo]] = {
    "activitynet": (activitynet.read_activitynet, activitynet.INFO),
    "didemo": (didemo.read_didemo, didemo.INFO),
    "folder": (partial(folder.read_folder, name="folder"), folder.FOLDER),
    "lsmdc": (lsmdc.read_lsmdc, lsmdc.INFO),
    "msrvtt": (msrvtt.read_msrvtt, msrvtt.INFO),
    "msvd": (msvd.read_msvd, msvd.INFO),
    "shapes": (partial(folder.read_folder, name="shapes"), folder.SHAPES),
}


def available() -> list[str]:
    return sorted(READERS)


def _entry(name: str) -> tuple[Reader, DatasetInfo]:
    if name not in READERS:
        raise DatasetError(f"unknown dataset {name!r} (available: {', '.join(available())})")
    return READERS[name]


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`~discovla.data.info.DatasetInfo` of dataset ``name``."""
    return _entry(name)[1]


def load_dataset(name: str, root: str | Path) -> VideoDataset:
    """Read dataset ``name`` (``discovla datasets`` lists them) from ``root``."""
    return _entry(name)[0](Path(root))
