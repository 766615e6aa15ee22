"""The ``folder`` dataset: ``<root>/videos/<video_id>.<ext>`` plus ``<root>/captions.csv``.

``captions.csv`` has a header and columns ``video_id, caption, split`` (split in train/val/test); a video
has one row per caption, and a caption that is empty or only whitespace is an error naming its row. A
video id listed in the CSV whose file is missing is kept (the frames stage records it as skipped, with
the reason), so that nothing is silently dropped.

An optional column ``path`` says where a video is instead: a path relative to the root, an absolute one,
or a URI of one of pyarrow's filesystems (``s3://bucket/videos/v1.mp4``, :mod:`discovla.locations`), which
the frames stage reads in place; one location per video.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from discovla.data import SPLITS, DatasetError, VideoDataset, check_captions
from discovla.data.files import VIDEO_EXTS
from discovla.data.info import DatasetInfo
from discovla.locations import is_uri

FOLDER = DatasetInfo(
    summary="Your own videos: videos/<video_id>.<ext> plus captions.csv (video_id, caption, split)",
    splits="as captions.csv says",
    protocol="t2v over every test caption; v2t multi-caption where a video has several",
    frames=12,
    context_length=32,
    files="captions.csv; videos/<video_id>.<ext>",
    source="you",
)
SHAPES = DatasetInfo(
    summary="The shapes world: seeded synthetic videos of moving shapes (the embedded default)",
    splits="params shapes.train_videos / val_videos / test_videos (2,000 / 200 / 500)",
    protocol="t2v and v2t, one caption per test video; order and content twins; reversal test",
    frames=8,
    context_length=32,
    files="written by the shapes stage (folder form)",
    source="`dvc repro shapes`",
)


def _find_video(videos_dir: Path, video_id: str, index: dict[str, Path]) -> Path:
    return index.get(video_id, videos_dir / f"{video_id}.mp4")


def _listed_paths(df: pd.DataFrame, root: Path, csv: Path) -> list[str]:
    """Each video's ``path`` column (one per video, none empty): URIs as given, relative paths under
    ``root``."""
    empty = df.path.str.strip() == ""
    if empty.any():
        raise DatasetError(f"{csv}: row {int(empty.idxmax()) + 2} has an empty path")
    paths = df.groupby("video_id", sort=False).path.unique()
    several = paths[paths.map(len) > 1]
    if len(several):
        raise DatasetError(f"{csv}: video {several.index[0]!r} has several paths")
    return [p if is_uri(p) else str(root / p) for p in paths.map(lambda ps: ps[0])]


def read_folder(root: Path, name: str = "folder") -> VideoDataset:
    root = Path(root)
    csv = root / "captions.csv"
    if not csv.exists():
        raise DatasetError(
            f"{csv} not found: a folder dataset needs videos/ and captions.csv (video_id, caption, split)"
        )
    dtypes = {"video_id": str, "caption": str, "split": str, "path": str}
    df = pd.read_csv(csv, dtype=dtypes, keep_default_na=False)
    missing = {"video_id", "caption", "split"} - set(df.columns)
    if missing:
        raise DatasetError(f"{csv}: missing column(s) {', '.join(sorted(missing))}")
    check_captions(df, csv)
    bad = sorted(set(df.split) - set(SPLITS))
    if bad:
        raise DatasetError(f"{csv}: split must be one of {', '.join(SPLITS)}, got {bad[0]!r}")
    splits = df.groupby("video_id", sort=False).split.nunique()
    if (splits > 1).any():
        raise DatasetError(f"{csv}: video {splits[splits > 1].index[0]!r} appears in several splits")
    videos_dir = root / "videos"
    index = {}
    if videos_dir.is_dir():
        for p in videos_dir.iterdir():
            if p.suffix.lower() in VIDEO_EXTS:
                index.setdefault(p.stem, p)
    videos = df.drop_duplicates("video_id")[["video_id", "split"]].reset_index(drop=True)
    if "path" in df.columns:
        videos.insert(1, "path", _listed_paths(df, root, csv))
    else:
        videos.insert(1, "path", [str(_find_video(videos_dir, v, index)) for v in videos.video_id])
    captions = df[["video_id", "caption", "split"]].reset_index(drop=True)
    captions.insert(0, "caption_id", range(len(captions)))
    return VideoDataset(name, root, videos, captions)
