"""MSRVTT, 1k-A split (the CLIP4Clip files).

Expected under ``root`` (the files of CLIP4Clip's ``msrvtt_data.zip`` plus the videos)::

    MSRVTT_data.json            {"sentences": [{"video_id", "caption", ...}, ...], ...}
    MSRVTT_train.9k.csv         column video_id: the 9,000 training videos
    MSRVTT_JSFUSION_test.csv    columns key, vid_key, video_id, sentence: the 1,000 test pairs
    videos/<video_id>.mp4       (``videos/all/`` or ``MSRVTT/videos/all/`` as unzipped also work)

Splits:

* ``test``: the 1,000 JSFUSION rows, one caption per video (the ``sentence`` column), in file order.
* ``val``: a deterministic carve-out of the 9k list: sort its video ids by their number (``video7`` <
  ``video10``) and take every 20th, starting with the first (450 videos), with all their sentences.
* ``train``: the other 8,550 videos of the 9k list with all their sentences from ``MSRVTT_data.json``.

A caption (train/val sentence or test ``sentence``) that is empty or only whitespace is a
:class:`~discovla.data.DatasetError` naming the file and row. A video listed in the annotation files
whose mp4 is missing is kept (the frames stage records it as skipped, with the reason), as in the
``folder`` reader.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from discovla.data import DatasetError, VideoDataset, check_captions
from discovla.data.info import DatasetInfo

DATA_JSON = "MSRVTT_data.json"
TRAIN_CSV = "MSRVTT_train.9k.csv"
TEST_CSV = "MSRVTT_JSFUSION_test.csv"
VIDEO_DIRS = ("videos", "videos/all", "MSRVTT/videos/all")
VAL_EVERY = 20
ANNOTATIONS_URL = "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msrvtt_data.zip"
VIDEOS_URL = "https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip"

INFO = DatasetInfo(
    summary="MSR-VTT: 10,000 web videos, 20 captions each",
    splits="8,550 / 450 (every 20th of the 9k list) / 1,000 videos (1k-A, JSFusion)",
    protocol="t2v and v2t over the 1,000 test pairs (one caption per video)",
    frames=12,
    context_length=32,
    files=f"{DATA_JSON}, {TRAIN_CSV}, {TEST_CSV}; videos/<video_id>.mp4",
    source=f"{ANNOTATIONS_URL}; videos: {VIDEOS_URL}",
    preset={"frames.num_frames": 12, "model.context_length": 32},
)


def _natural_key(video_id: str) -> tuple[str, int, str]:
    m = re.fullmatch(r"(\D*)(\d+)(.*)", video_id)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else (video_id, -1, "")


def val_video_ids(train_ids: list[str], every: int = VAL_EVERY) -> set[str]:
    """The validation carve-out: every ``every``-th id of ``train_ids`` in natural sorted order."""
    return set(sorted(train_ids, key=_natural_key)[::every])


def _videos_dir(root: Path) -> Path | None:
    for rel in VIDEO_DIRS:
        d = root / rel
        if d.is_dir() and any(d.glob("*.mp4")):
            return d
    return None


def _check_files(root: Path) -> Path:
    """The videos directory; :class:`DatasetError` naming every missing file, where to put and get it."""
    missing = [name for name in (DATA_JSON, TRAIN_CSV, TEST_CSV) if not (root / name).is_file()]
    videos = _videos_dir(root)
    problems = []
    if missing:
        problems.append(f"{', '.join(missing)} (unzip {ANNOTATIONS_URL} and put its files in {root})")
    if videos is None:
        target = root / "videos"
        problems.append(
            f"videos/<video_id>.mp4 (unzip {VIDEOS_URL}, move MSRVTT/videos/all/*.mp4 to {target})"
        )
    if problems or videos is None:
        raise DatasetError(f"msrvtt: missing under {root}: " + "; ".join(problems))
    return videos


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"{path}: not a readable CSV ({exc.__class__.__name__})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(df.columns)})")
    return df


def _read_sentences(path: Path) -> pd.DataFrame:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    sentences = data.get("sentences") if isinstance(data, dict) else None
    if not isinstance(sentences, list) or not all(
        isinstance(s, dict) and "video_id" in s and "caption" in s for s in sentences
    ):
        raise DatasetError(f'{path}: expected {{"sentences": [{{"video_id": ..., "caption": ...}}, ...]}}')
    return pd.DataFrame(
        {
            "video_id": [str(s["video_id"]) for s in sentences],
            "caption": ["" if s["caption"] is None else str(s["caption"]).strip() for s in sentences],
        }
    )


def read_msrvtt(root: str | Path) -> VideoDataset:
    """Read MSRVTT 1k-A from ``root`` (see the module docstring for files and splits)."""
    root = Path(root)
    videos_dir = _check_files(root)
    train_ids = list(dict.fromkeys(_read_csv(root / TRAIN_CSV, ("video_id",)).video_id.str.strip()))
    test = _read_csv(root / TEST_CSV, ("video_id", "sentence"))
    test = pd.DataFrame({"video_id": test.video_id.str.strip(), "caption": test.sentence.str.strip()})
    check_captions(test, root / TEST_CSV)
    if test.video_id.duplicated().any():
        raise DatasetError(
            f"{root / TEST_CSV}: video {test.video_id[test.video_id.duplicated()].iloc[0]!r} twice"
        )
    overlap = set(train_ids) & set(test.video_id)
    if overlap:
        raise DatasetError(f"{root / TRAIN_CSV}: video {sorted(overlap)[0]!r} is also in {TEST_CSV}")
    sentences = _read_sentences(root / DATA_JSON)
    sentences = sentences[sentences.video_id.isin(set(train_ids))]
    check_captions(sentences, root / DATA_JSON, row="sentences[{}]", first=0)
    without = sorted(set(train_ids) - set(sentences.video_id), key=_natural_key)
    if without:
        raise DatasetError(
            f"{root / DATA_JSON}: no sentences for {len(without)} train video(s), e.g. {without[0]!r}"
        )
    val = val_video_ids(train_ids)
    split_of = {v: ("val" if v in val else "train") for v in train_ids}
    sentences = sentences.assign(split=sentences.video_id.map(split_of))
    sentences = sentences.sort_values("split", kind="stable", key=lambda s: s.map({"train": 0, "val": 1}))
    captions = pd.concat([sentences, test.assign(split="test")], ignore_index=True)
    captions.insert(0, "caption_id", range(len(captions)))
    order = [v for v in train_ids if v not in val] + [v for v in train_ids if v in val] + list(test.video_id)
    videos = pd.DataFrame(
        {
            "video_id": order,
            "path": [str(videos_dir / f"{v}.mp4") for v in order],
            "split": [split_of.get(v, "test") for v in order],
        }
    )
    return VideoDataset("msrvtt", root, videos, captions[["caption_id", "video_id", "caption", "split"]])
