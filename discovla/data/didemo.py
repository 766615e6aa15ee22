"""DiDeMo (Distinct Describable Moments, Hendricks et al. 2017).

Expected under ``root``:

* ``train_data.json``, ``val_data.json``, ``test_data.json``: each a list of moments
  ``{"video": "<name>", "description": "...", "times": [[s, e], ...], ...}`` (the files of
  github.com/LisaAnne/LocalizingMoments, ``data/``);
* the videos under ``videos/``: a moment's ``video`` field is matched to a file by its full name, by its
  name without the extension (``x.mov`` -> ``x.mp4`` after conversion) or by its stem.

Protocol (paragraph-to-video retrieval, as CLIP4Clip and the papers after it): every description of a video,
in file order, joined into one query, so each split has one caption per video (1,004 test videos; a few of
the released videos are no longer available and are recorded by the frames stage as skipped).

A moment repeated exactly is kept (its description twice in the paragraph), as CLIP4Clip keeps it.
Skipped with a reason: an empty description, a moment without a ``video`` name. A video in two split
files is an error.
"""

from __future__ import annotations

from pathlib import Path

from discovla.data import DatasetError, VideoDataset
from discovla.data.files import Skips, assemble, clean, missing_files, paragraph, read_json, video_files
from discovla.data.info import DatasetInfo

FILES = {"train": "train_data.json", "val": "val_data.json", "test": "test_data.json"}
ANNOTATIONS_URL = "https://github.com/LisaAnne/LocalizingMoments/tree/master/data"
VIDEOS_URL = "https://github.com/LisaAnne/LocalizingMoments (README: 'Getting the videos')"

INFO = DatasetInfo(
    summary="DiDeMo: about 10,000 Flickr videos with localised moment descriptions",
    splits="8,395 / 1,065 / 1,004 videos (the released files)",
    protocol="paragraph-to-video: a video's descriptions joined into one query; t2v and v2t",
    frames=64,
    context_length=64,
    files="train_data.json, val_data.json, test_data.json; videos/<video>",
    source=f"{ANNOTATIONS_URL}; videos: {VIDEOS_URL}",
    preset={"frames.num_frames": 64, "model.context_length": 64},
)


def _video_key(name: str, paths: dict[str, Path]) -> str:
    """The id of a DiDeMo video: its name without the extension when a file is found that way."""
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return name if name in paths and stem not in paths else stem


def read_didemo(root: str | Path) -> VideoDataset:
    """Read DiDeMo from ``root`` (see the module docstring for files, splits and protocol)."""
    root = Path(root)
    skips = Skips()
    missing = [(name, f"from {ANNOTATIONS_URL}") for name in FILES.values() if not (root / name).is_file()]
    paths = video_files([root / "videos"])
    if not paths:
        missing.append(("videos/<video>", f"download as {VIDEOS_URL} says, into {root / 'videos'}"))
    if missing:
        raise missing_files("didemo", root, missing)
    split_of: dict[str, str] = {}
    rows = []
    for split, name in FILES.items():
        path = root / name
        moments = read_json(path)
        if not isinstance(moments, list):
            raise DatasetError(
                f'{path}: expected a list of moments [{{"video", "description", "times"}}, ...]'
            )
        texts: dict[str, list[str]] = {}
        for i, m in enumerate(moments):
            video = m.get("video") if isinstance(m, dict) else None
            if not isinstance(video, str) or not video.strip():
                skips.add(path, f"[{i}]", "", "moment without a video name")
                continue
            vid = _video_key(video.strip(), paths)
            text = clean(m.get("description"))
            if not text:
                skips.add(path, f"[{i}]", vid, "empty description")
                continue
            if split_of.setdefault(vid, split) != split:
                raise DatasetError(f"{path}: [{i}]: video {vid!r} is also in {FILES[split_of[vid]]}")
            texts.setdefault(vid, []).append(text)
        rows += [(vid, paragraph(t), split) for vid, t in texts.items()]
    if not rows:
        raise DatasetError(f"didemo: no moment with a description in {root}")
    return assemble("didemo", root, rows, paths, root / "videos", skips)
