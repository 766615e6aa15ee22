"""What the benchmark readers share: finding video files, reading annotation text and JSON with errors that
name the file, recording skipped rows, and assembling a :class:`~discovla.data.VideoDataset`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from discovla.data import SKIP_COLUMNS, DatasetError, VideoDataset

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".3gp", ".wmv", ".mpg", ".mpeg", ".flv")


def video_files(dirs: Iterable[Path], recursive: bool = False) -> dict[str, Path]:
    """Video files under ``dirs`` (the first that exists and holds any), keyed by file name and by stem.

    With ``recursive`` every subdirectory is walked once (LSMDC keeps one folder per movie). A stem shared
    by two files (``a.mp4`` and ``a.avi``) maps to the first in sorted order."""
    for d in dirs:
        if not d.is_dir():
            continue
        found: dict[str, Path] = {}
        walk = os.walk(d) if recursive else [(str(d), [], os.listdir(d))]
        for folder, subdirs, names in walk:
            subdirs.sort()
            for name in sorted(names):
                p = Path(folder) / name
                if p.suffix.lower() in VIDEO_EXTS:
                    found.setdefault(name, p)
                    found.setdefault(p.stem, p)
        if found:
            return found
    return {}


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path`` (a byte-order mark is dropped); a :class:`DatasetError` if it is not."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start}); re-save it as UTF-8") from None


def lines(text: str) -> list[str]:
    """``text`` split at ``\\n`` only (a ``\\r`` before it dropped), as the datasets' own loaders read
    them: ``str.splitlines`` would also split at U+2028, form feeds and other separators that can occur
    inside a sentence."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    dups = []
    for k, v in pairs:
        if k in out:
            dups.append(k)
        else:
            out[k] = v
    if dups:
        out["\0duplicates"] = dups
    return out


def read_json(path: Path) -> Any:
    """Parsed JSON of ``path``. An object's repeated key keeps its first value and is listed under the
    key ``"\\0duplicates"`` of that object (``json`` itself would keep the last one silently)."""
    try:
        return json.loads(read_text(path), object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None


def clean(text: Any) -> str:
    """A caption as the readers keep it: a string with surrounding whitespace removed ('' for None)."""
    return "" if text is None else " ".join(str(text).split())


def paragraph(sentences: Iterable[str]) -> str:
    """The paragraph query of paragraph-to-video retrieval: the non-empty sentences, in order, joined by a
    space (as CLIP4Clip builds DiDeMo and ActivityNet paragraphs)."""
    return " ".join(s for s in (clean(x) for x in sentences) if s)


class Skips:
    """Rows a reader skips, each with its file, row and reason."""

    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []

    def add(self, file: Path | str, row: Any, video_id: Any, reason: str) -> None:
        self.rows.append({"file": str(file), "row": str(row), "video_id": str(video_id), "reason": reason})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(SKIP_COLUMNS)).astype(str)


def missing_files(dataset: str, root: Path, missing: list[tuple[str, str]]) -> DatasetError:
    """One error naming every missing file (``(what, where to get it)``) under ``root``."""
    parts = "; ".join(f"{what} ({how})" for what, how in missing)
    return DatasetError(f"{dataset}: missing under {root}: {parts}")


def assemble(
    name: str,
    root: Path,
    captions: list[tuple[str, str, str]],
    paths: dict[str, Path],
    videos_dir: Path,
    skips: Skips,
    default_ext: str = ".mp4",
) -> VideoDataset:
    """A :class:`VideoDataset` from ``(video_id, caption, split)`` rows in reading order. Each video's row
    in ``videos`` comes at its first caption; its path is its file under ``videos_dir`` (``paths``: the
    :func:`video_files` index, looked up by id) or, when missing, ``videos_dir/<id><default_ext>``, which
    the frames stage then records as skipped with the reason (nothing is dropped silently)."""
    caps = pd.DataFrame(captions, columns=["video_id", "caption", "split"])
    caps.insert(0, "caption_id", range(len(caps)))
    vids = caps.drop_duplicates("video_id")[["video_id", "split"]].reset_index(drop=True)
    vids.insert(1, "path", [str(paths.get(v, videos_dir / f"{v}{default_ext}")) for v in vids.video_id])
    return VideoDataset(name, root, vids, caps, skips.frame())
