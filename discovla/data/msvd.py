"""MSVD (the Microsoft Research Video Description corpus, YouTube2Text split).

Expected under ``root``:

* the split: ``train_list.txt``, ``val_list.txt``, ``test_list.txt`` (one clip name per line, the files of
  CLIP4Clip's ``msvd_data.zip``), or ``youtube_mapping.txt`` (``<clip> vid<N>`` per line), from which the
  standard split is derived: vid1-vid1200 train, vid1201-vid1300 val, vid1301-vid1970 test;
* the captions, the first of these found:
  ``raw-captions.json`` (``{clip: [sentence, ...]}``; a sentence may also be a list of tokens),
  ``AllVideoDescriptions.txt`` (``<clip> <sentence>`` per line, ``#`` comments), or the corpus CSV
  ``MSR Video Description Corpus.csv`` (columns ``VideoID, Start, End, ..., Language, Description``;
  English rows, clip ``<VideoID>_<Start>_<End>``). CLIP4Clip ships the captions only as a pickle
  (``raw-captions.pkl``), which this reader never unpickles: convert it once, in a Python you trust, to
  ``raw-captions.json`` (the error message gives the one-line command);
* the clips: ``YouTubeClips/<clip>.avi`` (from ``YouTubeClips.tar``) or ``videos/<clip>.<ext>``.

Protocol: every caption of a test clip is a query (t2v over about 27,000 captions); v2t counts a clip as
found at the best rank of any of its captions (multi-caption).

Skipped with a reason (``VideoDataset.skipped``): an empty caption, a line without a caption, a clip
listed twice in a split list (the repeat), a listed clip without any caption, a corpus row in another
language or with a malformed start/end. A clip in two split lists is an error.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from discovla.data import DatasetError, VideoDataset
from discovla.data.files import (
    Skips,
    assemble,
    clean,
    lines,
    missing_files,
    read_json,
    read_text,
    video_files,
)
from discovla.data.info import DatasetInfo

SPLIT_LISTS = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}
MAPPING = "youtube_mapping.txt"
CAPTION_FILES = ("raw-captions.json", "AllVideoDescriptions.txt", "MSR Video Description Corpus.csv")
PICKLE = "raw-captions.pkl"
VIDEO_DIRS = ("YouTubeClips", "videos")
# The YouTube2Text split (Guadarrama et al. 2013; Venugopalan et al. 2015) over vid1..vid1970.
MAPPING_SPLITS = (("train", 1, 1200), ("val", 1201, 1300), ("test", 1301, 1970))
ANNOTATIONS_URL = "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msvd_data.zip"
VIDEOS_URL = "https://www.cs.utexas.edu/users/ml/clamp/videoDescription/YouTubeClips.tar"
CONVERT = (
    "python -c \"import json, pickle; d = pickle.load(open('raw-captions.pkl', 'rb')); "
    "json.dump({k: [' '.join(s) if isinstance(s, list) else s for s in v] for k, v in d.items()}, "
    "open('raw-captions.json', 'w'))\""
)

INFO = DatasetInfo(
    summary="MSVD: 1,970 YouTube clips, about 40 English captions each",
    splits="1,200 / 100 / 670 clips (YouTube2Text split)",
    protocol="t2v over every test caption; v2t multi-caption (a clip's best-ranked caption)",
    frames=12,
    context_length=32,
    files="train_list.txt, val_list.txt, test_list.txt (or youtube_mapping.txt); raw-captions.json, "
    "AllVideoDescriptions.txt or 'MSR Video Description Corpus.csv'; YouTubeClips/<clip>.avi",
    source=f"{ANNOTATIONS_URL} (lists; captions as a pickle: convert) and {VIDEOS_URL}",
    preset={"frames.num_frames": 12, "model.context_length": 32},
)


def _split_of(root: Path, skips: Skips) -> dict[str, str]:
    """clip -> split, from the split lists or the mapping file."""
    if all((root / f).is_file() for f in SPLIT_LISTS.values()):
        split_of: dict[str, str] = {}
        for split, name in SPLIT_LISTS.items():
            for i, line in enumerate(lines(read_text(root / name)), start=1):
                clip = line.strip()
                if not clip:
                    continue
                if clip in split_of:
                    if split_of[clip] != split:
                        raise DatasetError(
                            f"{root / name}: line {i}: clip {clip!r} is also in the {split_of[clip]} list"
                        )
                    skips.add(root / name, f"line {i}", clip, "listed twice (repeat ignored)")
                    continue
                split_of[clip] = split
        return split_of
    split_of = {}
    for i, line in enumerate(lines(read_text(root / MAPPING)), start=1):
        parts = line.split()
        if not parts:
            continue
        m = re.fullmatch(r"vid(\d+)", parts[-1]) if len(parts) == 2 else None
        if m is None:
            raise DatasetError(f"{root / MAPPING}: line {i}: expected '<clip> vid<N>', got {line.strip()!r}")
        n = int(m.group(1))
        for split, lo, hi in MAPPING_SPLITS:
            if lo <= n <= hi:
                split_of[parts[0]] = split
    return split_of


def _captions(path: Path, skips: Skips) -> dict[str, list[str]]:
    """clip -> captions in file order, from any of the three text forms."""
    out: dict[str, list[str]] = {}

    def keep(clip: str, text: object, row: str) -> None:
        caption = clean(text)
        if caption:
            out.setdefault(clip, []).append(caption)
        else:
            skips.add(path, row, clip, "empty caption")

    if path.suffix == ".json":
        data = read_json(path)
        if not isinstance(data, dict):
            raise DatasetError(f'{path}: expected {{"<clip>": ["<sentence>", ...], ...}}')
        for clip, sentences in data.items():
            if clip == "\0duplicates":
                for dup in sentences:
                    skips.add(path, f"key {dup!r}", dup, "clip repeated in the JSON object (first kept)")
                continue
            if not isinstance(sentences, list):
                skips.add(path, f"key {clip!r}", clip, "captions are not a list")
                continue
            for j, s in enumerate(sentences):
                keep(clip, " ".join(map(str, s)) if isinstance(s, list) else s, f"{clip}[{j}]")
    elif path.suffix == ".txt":
        for i, line in enumerate(lines(read_text(path)), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            clip, _, text = line.strip().partition(" ")
            keep(clip, text, f"line {i}")
    else:
        rows = csv.reader(io.StringIO(read_text(path)))
        header = next(rows, [])
        need = ("VideoID", "Start", "End", "Language", "Description")
        if any(c not in header for c in need):
            raise DatasetError(f"{path}: expected columns {', '.join(need)} (has {', '.join(header)})")
        col = {c: header.index(c) for c in need}
        for i, row in enumerate(rows, start=2):  # i: the record's number, the header being 1
            if len(row) != len(header):
                reason = f"{len(row)} fields, expected {len(header)}"
                skips.add(path, f"record {i}", row[0] if row else "", reason)
                continue
            if row[col["Language"]].strip() != "English":
                continue  # the other languages of the corpus are not part of the benchmark
            start, end = row[col["Start"]].strip(), row[col["End"]].strip()
            if not (start.isdigit() and end.isdigit()):
                reason = f"start/end {start!r}/{end!r} not integers"
                skips.add(path, f"record {i}", row[col["VideoID"]], reason)
                continue
            clip = f"{row[col['VideoID']].strip()}_{start}_{end}"
            keep(clip, row[col["Description"]], f"record {i}")
    return out


def read_msvd(root: str | Path) -> VideoDataset:
    """Read MSVD from ``root`` (see the module docstring for files, splits and protocol)."""
    root = Path(root)
    skips = Skips()
    missing = []
    has_lists = all((root / f).is_file() for f in SPLIT_LISTS.values())
    if not has_lists and not (root / MAPPING).is_file():
        missing.append((f"{', '.join(SPLIT_LISTS.values())} or {MAPPING}", f"from {ANNOTATIONS_URL}"))
    caption_file = next((root / f for f in CAPTION_FILES if (root / f).is_file()), None)
    if caption_file is None:
        if (root / PICKLE).is_file():
            raise DatasetError(
                f"msvd: {root / PICKLE} is a pickle, which this reader never loads: convert it once to "
                f"raw-captions.json in that folder, in a Python you trust: {CONVERT}"
            )
        missing.append((" or ".join(CAPTION_FILES), f"raw-captions.json converted from {ANNOTATIONS_URL}"))
    paths = video_files(root / d for d in VIDEO_DIRS)
    if not paths:
        missing.append(("YouTubeClips/<clip>.avi", f"untar {VIDEOS_URL} into {root}"))
    if missing:
        raise missing_files("msvd", root, missing)
    assert caption_file is not None
    split_of = _split_of(root, skips)
    captions = _captions(caption_file, skips)
    rows = []
    for split in ("train", "val", "test"):
        for clip in (c for c, s in split_of.items() if s == split):
            if not captions.get(clip):
                skips.add(caption_file, "-", clip, f"{split} clip without any caption")
                continue
            rows += [(clip, c, split) for c in captions[clip]]
    if not rows:
        raise DatasetError(f"msvd: no listed clip of {root} has a caption in {caption_file.name}")
    return assemble("msvd", root, rows, paths, root / VIDEO_DIRS[0], skips, default_ext=".avi")
