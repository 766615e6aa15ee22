"""ActivityNet Captions (Krishna et al. 2017).

Expected under ``root``:

* ``train.json`` and ``val_1.json``: ``{"v_<id>": {"duration": s, "timestamps": [[s, e], ...],
  "sentences": ["...", ...]}, ...}`` (cs.stanford.edu/people/ranjaykrishna/densevid/captions.zip);
* the videos under ``videos/``, named with or without the ``v_`` prefix (``v_<id>.mp4`` or ``<id>.mkv``).

Splits: ``test`` is ``val_1`` (about 4,900 videos), as in CLIP4Clip and the papers after it. ``val`` (used
only for monitoring, never for selection) is every 20th video of ``train.json`` in sorted id order;
``train`` the rest. This differs from CLIP4Clip, which trains on all of ``train.json`` (10,009 videos) and
has no val split: here training sees 95% of them. ``val_2.json`` is not read (it annotates val_1's videos
again).

Protocol (paragraph-to-video retrieval): a video's sentences, in file order, joined into one query.

Ids: a video is ``v_<id>`` whichever form its key has (``<id>`` gets the prefix), so the two forms of one
video are one video. Skipped with a reason: an empty sentence, a video whose ``sentences`` is not a list of
strings or whose ``timestamps`` do not pair with them, a video without any sentence, a key repeated in one
file (also as its other form). A video in both files is an error.
"""

from __future__ import annotations

from pathlib import Path

from discovla.data import DatasetError, VideoDataset
from discovla.data.files import Skips, assemble, clean, missing_files, paragraph, read_json, video_files
from discovla.data.info import DatasetInfo

FILES = {"train": "train.json", "test": "val_1.json"}
VAL_EVERY = 20
ANNOTATIONS_URL = "https://cs.stanford.edu/people/ranjaykrishna/densevid/captions.zip"
VIDEOS_URL = "http://activity-net.org/download.html (the ActivityNet v1.3 videos)"

INFO = DatasetInfo(
    summary="ActivityNet Captions: about 20,000 YouTube videos (minutes long) with dense captions",
    splits="about 10,000 train (every 20th held out as val) / 4,917 test (val_1) videos",
    protocol="paragraph-to-video on val_1: a video's sentences joined into one query; t2v and v2t",
    frames=64,
    context_length=64,
    files="train.json, val_1.json; videos/v_<id>.<ext> (or <id>.<ext>)",
    source=f"{ANNOTATIONS_URL}; videos: {VIDEOS_URL}",
    preset={"frames.num_frames": 64, "model.context_length": 64},
)


def video_id(key: str) -> str:
    """The canonical id of an ActivityNet video: ``v_<id>`` (the prefix added when a key lacks it)."""
    key = key.strip()
    return key if key.startswith("v_") else f"v_{key}"


def _paths(files: dict[str, Path], ids: list[str]) -> dict[str, Path]:
    """The file of each canonical id: named ``v_<id>`` or, without the prefix, ``<id>`` (a YouTube id may
    itself start with ``v_``: its video is ``v_v_...`` and its unprefixed file ``v_...``)."""
    out = {}
    for vid in ids:
        found = files.get(vid) or files.get(vid[2:])
        if found is not None:
            out[vid] = found
    return out


def read_activitynet(root: str | Path) -> VideoDataset:
    """Read ActivityNet Captions from ``root`` (see the module docstring for files, splits and protocol)."""
    root = Path(root)
    skips = Skips()
    missing = [(name, f"unzip {ANNOTATIONS_URL}") for name in FILES.values() if not (root / name).is_file()]
    files = video_files([root / "videos"])
    if not files:
        missing.append(("videos/v_<id>.mp4", f"download from {VIDEOS_URL} into {root / 'videos'}"))
    if missing:
        raise missing_files("activitynet", root, missing)
    split_of: dict[str, str] = {}
    paragraphs: dict[str, dict[str, str]] = {"train": {}, "test": {}}
    for split, name in FILES.items():
        path = root / name
        data = read_json(path)
        if not isinstance(data, dict):
            raise DatasetError(f'{path}: expected {{"v_<id>": {{"timestamps": [...], "sentences": [...]}}}}')
        for dup in data.pop("\0duplicates", []):
            skips.add(path, f"key {dup!r}", video_id(dup), "key repeated in the file (first kept)")
        for key, ann in data.items():
            vid = video_id(key)
            sentences = ann.get("sentences") if isinstance(ann, dict) else None
            stamps = ann.get("timestamps") if isinstance(ann, dict) else None
            if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
                skips.add(path, f"key {key!r}", vid, "sentences is not a list of strings")
                continue
            if stamps is not None and (not isinstance(stamps, list) or len(stamps) != len(sentences)):
                skips.add(path, f"key {key!r}", vid, "timestamps do not pair with the sentences")
                continue
            if vid in paragraphs[split]:
                skips.add(path, f"key {key!r}", vid, "same video as another key of the file (first kept)")
                continue
            if split_of.setdefault(vid, split) != split:
                raise DatasetError(f"{path}: video {vid!r} is also in {FILES[split_of[vid]]}")
            for j, s in enumerate(sentences):
                if not clean(s):
                    skips.add(path, f"{key}.sentences[{j}]", vid, "empty sentence")
            text = paragraph(sentences)
            if not text:
                skips.add(path, f"key {key!r}", vid, "no non-empty sentence")
                continue
            paragraphs[split][vid] = text
    val = set(sorted(paragraphs["train"])[::VAL_EVERY])
    rows = [(v, t, "train") for v, t in paragraphs["train"].items() if v not in val]
    rows += [(v, t, "val") for v, t in paragraphs["train"].items() if v in val]
    rows += [(v, t, "test") for v, t in paragraphs["test"].items()]
    if not rows:
        raise DatasetError(f"activitynet: no video with a sentence in {root}")
    paths = _paths(files, [v for v, _, _ in rows])
    return assemble("activitynet", root, rows, paths, root / "videos", skips)
