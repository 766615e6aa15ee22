"""The pseudo captions table (stage ``captions``): one caption per frame row of the frames store.

Layout (docs/formats.md): one Parquet file (``data/captions.parquet`` in the pipeline) of ``video_id (str),
frame (int32), caption (str)``, exactly one row per row of the frames shards, in their order. Written by
:func:`write_captions`, read by :func:`read_captions` (the stage builds it with
:func:`discovla.captioning.make_captions`). :func:`export_pseudo_captions` / :func:`import_pseudo_captions`
convert to and from the DiscoVLA release form, a JSON object
``{"<video_id>": [caption of frame 0, caption of frame 1, ...]}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from discovla.artifacts.frames import KEYS
from discovla.io import write_json, write_parquet
from discovla.text import CaptionsError, normalize_caption

CAPTIONS_SCHEMA = pa.schema([("video_id", pa.string()), ("frame", pa.int32()), ("caption", pa.string())])


# --------------------------------------------------------------------------------------------------------
# The table: writer, reader, check


def captions_table(captions: pd.DataFrame) -> pa.Table:
    """``video_id, frame, caption`` of ``captions`` as an Arrow table of :data:`CAPTIONS_SCHEMA`."""
    df = captions[["video_id", "frame", "caption"]].astype(
        {"video_id": str, "frame": "int32", "caption": str}
    )
    return pa.Table.from_pandas(df, schema=CAPTIONS_SCHEMA, preserve_index=False)


def write_captions(path: str | Path, captions: pd.DataFrame) -> None:
    """Write the captions table to ``path`` atomically."""
    write_parquet(path, captions_table(captions))


def read_captions(path: str | Path) -> pd.DataFrame:
    """The captions table at ``path``: ``video_id, frame, caption``, in file order."""
    if not Path(path).is_file():
        raise CaptionsError(f"{path} not found (run the captions stage)")
    table = pq.read_table(path)
    if not table.schema.equals(CAPTIONS_SCHEMA):
        raise CaptionsError(f"{path}: expected columns {CAPTIONS_SCHEMA}, got {table.schema}")
    return table.to_pandas()


def check_one_caption_per_frame(frames_index: pd.DataFrame, captions: pd.DataFrame) -> None:
    """Exactly one caption row per frame row, same keys, no missing caption."""
    if len(captions) != len(frames_index):
        raise CaptionsError(f"{len(captions)} caption rows for {len(frames_index)} frame rows")
    if captions.duplicated(KEYS).any():
        raise CaptionsError("duplicate (video_id, frame) rows in the captions")
    a = frames_index[KEYS].astype({"frame": "int64"})
    b = captions[KEYS].astype({"frame": "int64"})
    joined = a.merge(b, on=KEYS, how="left", indicator=True)
    if (joined["_merge"] != "both").any():
        first = joined[joined["_merge"] != "both"].iloc[0]
        raise CaptionsError(f"frame ({first.video_id!r}, {first.frame}) has no caption")
    if captions["caption"].isna().any():
        raise CaptionsError("a frame has no caption (null)")


# --------------------------------------------------------------------------------------------------------
# Import / export (the DiscoVLA release form)


def export_pseudo_captions(captions: pd.DataFrame, path: str | Path) -> None:
    """Write ``{"<video_id>": [caption of frame 0, frame 1, ...]}`` (videos in first-appearance order)."""
    if captions.duplicated(KEYS).any():
        raise CaptionsError("duplicate (video_id, frame) rows: one caption per frame expected")
    out: dict[str, list[str]] = {}
    for vid, group in captions.groupby("video_id", sort=False):
        out[str(vid)] = group.sort_values("frame").caption.astype(str).tolist()
    write_json(path, out)


def _suffix_key(suffix: str) -> tuple[int, int | str]:
    return (0, int(suffix)) if suffix.isdigit() else (1, suffix)


def _group_pseudo_captions(raw: dict[str, Any], known: set[str]) -> tuple[dict[str, list[str]], int]:
    """Map JSON keys to known video ids (``<id>`` or ``<id>_<suffix>``); values: caption(s)."""
    exact: dict[str, list[str]] = {}
    suffixed: dict[str, list[tuple[tuple[int, int | str], list[str]]]] = {}
    ignored = 0
    for key, value in raw.items():
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(c, str) for c in items):
            raise CaptionsError(f"pseudo captions {key!r}: expected a caption or a list of captions")
        head, _, suffix = key.rpartition("_")
        if key in known:
            exact[key] = items
        elif head in known:
            suffixed.setdefault(head, []).append((_suffix_key(suffix), items))
        else:
            ignored += 1
    both = sorted(set(exact) & set(suffixed))
    if both:
        raise CaptionsError(
            f"pseudo captions for {both[0]!r} given both as {both[0]!r} and as {both[0]!r}_<n>"
        )
    for vid, parts in suffixed.items():
        exact[vid] = [c for _, items in sorted(parts, key=lambda p: p[0]) for c in items]
    return exact, ignored


def resample_uniform(items: Sequence[str], n: int) -> list[str]:
    """``n`` items picked at the centres of ``n`` equal bins over ``items`` (repeats when too few)."""
    m = len(items)
    return [items[min(m - 1, int((i + 0.5) * m / n))] for i in range(n)]


def import_pseudo_captions(path: str | Path, frames: pd.DataFrame, resample: bool = True) -> pd.DataFrame:
    """Read a pseudo-caption JSON and give every frame row of ``frames`` (video_id, frame) one caption.

    Keys are ``<video_id>`` (value: the list of per-frame captions in frame order) or ``<video_id>_<suffix>``
    (suffix stripped after the last underscore only when the rest is a known video id; parts ordered by
    numeric suffix and concatenated). A video whose list length differs from its number of frames F gets
    the list resampled uniformly to F (``resample=False``: an error). Keys of unknown videos are ignored;
    a frames video without captions is an error. Counts are in ``result.attrs["import"]``.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CaptionsError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(raw, dict):
        raise CaptionsError(f"{path}: expected a JSON object keyed by video id")
    grouped, ignored = _group_pseudo_captions(raw, set(frames.video_id.astype(str)))
    rows, resampled = [], 0
    ordered = frames[KEYS].astype({"video_id": str}).sort_values(KEYS)
    for vid, g in ordered.groupby("video_id", sort=False):
        items = grouped.get(vid)
        if not items:
            raise CaptionsError(f"{path}: no pseudo captions for video {vid!r}")
        if len(items) != len(g):
            if not resample:
                raise CaptionsError(f"{path}: video {vid!r} has {len(items)} captions for {len(g)} frames")
            items, resampled = resample_uniform(items, len(g)), resampled + 1
        rows.append(g.assign(caption=[normalize_caption(c) for c in items]))
    out = frames[KEYS].astype({"video_id": str}).merge(pd.concat(rows), on=KEYS, how="left")
    out["frame"] = out["frame"].astype("int32")
    out.attrs["import"] = {"videos": len(rows), "resampled_videos": resampled, "ignored_keys": ignored}
    return out
