"""``discovla datasets check``: read a dataset as the pipeline would and say what was read, what is
missing and what was skipped, before any video is decoded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from discovla import locations
from discovla.data import SPLITS, DatasetError
from discovla.data.registry import load_dataset


def check_dataset(name: str, root: str | Path, examples: int = 3) -> dict[str, Any]:
    """What :func:`~discovla.data.registry.load_dataset` reads from ``root``: per split the videos, the
    captions (and words per caption), the videos whose file is missing; the skipped annotation rows by reason,
    with up to ``examples`` of each. Raises :class:`~discovla.data.DatasetError` when the dataset
    cannot be read at all."""
    ds = load_dataset(name, root)
    try:  # local files, or objects behind a pyarrow URI (listed a folder at a time)
        found = locations.stat_many(list(ds.videos.path))
    except locations.LocationError as exc:
        raise DatasetError(f"cannot reach the videos: {exc}") from None
    exists = pd.Series([f is not None for f in found], index=ds.videos.index)
    words = ds.captions.caption.str.split().str.len()
    splits = {}
    for split in SPLITS:
        v = ds.videos.split == split
        c = ds.captions.split == split
        splits[split] = {
            "videos": int(v.sum()),
            "captions": int(c.sum()),
            "missing_videos": int((v & ~exists).sum()),
            "words_per_caption_mean": round(float(words[c].mean()), 1) if c.any() else 0.0,
            "words_per_caption_max": int(words[c].max()) if c.any() else 0,
        }
    missing = ds.videos[~exists]
    skipped = {
        reason: {
            "count": len(rows),
            "examples": [f"{r.file}: {r.row}: {r.video_id}" for r in rows.head(examples).itertuples()],
        }
        for reason, rows in ds.skipped.groupby("reason", sort=True)
    }
    return {
        "dataset": name,
        "root": str(root),
        "splits": splits,
        "missing_videos": [str(p) for p in missing.path.head(examples)],
        "missing_videos_total": len(missing),
        "skipped_rows": skipped,
        "skipped_rows_total": len(ds.skipped),
    }


def format_check(report: dict[str, Any]) -> str:
    """The human-readable form of :func:`check_dataset`'s report."""
    lines = [f"{report['dataset']} at {report['root']}"]
    for split, s in report["splits"].items():
        lines.append(
            f"  {split:<5} {s['videos']:>7,} videos {s['captions']:>8,} captions "
            f"({s['words_per_caption_mean']} words mean, {s['words_per_caption_max']} max), "
            f"{s['missing_videos']:,} video file(s) missing"
        )
    if report["missing_videos_total"]:
        lines.append(
            f"  missing video files: {report['missing_videos_total']:,} (the frames stage skips them), e.g. "
            + ", ".join(report["missing_videos"])
        )
    lines.append(f"  skipped annotation rows: {report['skipped_rows_total']:,}")
    for reason, s in report["skipped_rows"].items():
        lines.append(f"    {s['count']:>6,}  {reason}: " + "; ".join(s["examples"]))
    return "\n".join(lines)
