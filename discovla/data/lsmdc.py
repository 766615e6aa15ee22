"""LSMDC (Large Scale Movie Description Challenge, 2016 retrieval task).

Expected under ``root``:

* ``LSMDC16_annos_training.csv``, ``LSMDC16_annos_val.csv`` and ``LSMDC16_challenge_1000_publictect.csv``
  (the public test set; the file name's ``publictect`` is the release's own spelling, ``publictest`` is
  accepted too): tab-separated, no header, six fields per line: clip id, start and end (aligned), start
  and end (extracted), sentence;
* the clips under ``videos/`` or ``avi/``, one folder per movie as released (``<movie>/<clip id>.avi``);
  every folder is searched, so a flat layout works too.

Splits and protocol: train and val as released; test is the 1,000-clip public test set, one sentence per
clip, t2v and v2t over those 1,000 pairs (as CLIP4Clip and the papers after it). Sentences are kept as
written (the release's ``SOMEONE`` for names included).

Lines are split at ``\n`` only (as CLIP4Clip reads them), then at tabs; fields after the sixth (a tab
inside a sentence, or trailing tabs) are joined to the sentence with a space, and the clip id and the
sentence are stripped. A line repeated in train or val is
kept, as CLIP4Clip keeps it. Skipped with a reason: a line with fewer than six fields, an empty sentence, a
clip id repeated in the test file (the repeat; the protocol is one sentence per clip). A clip in two split
files is an error.
"""

from __future__ import annotations

from pathlib import Path

from discovla.data import DatasetError, VideoDataset
from discovla.data.files import Skips, assemble, clean, lines, missing_files, read_text, video_files
from discovla.data.info import DatasetInfo

FILES = {
    "train": ("LSMDC16_annos_training.csv",),
    "val": ("LSMDC16_annos_val.csv",),
    "test": ("LSMDC16_challenge_1000_publictect.csv", "LSMDC16_challenge_1000_publictest.csv"),
}
VIDEO_DIRS = ("videos", "avi")
SOURCE_URL = "https://sites.google.com/site/describingmovies/download (annotations and clips, on request)"

INFO = DatasetInfo(
    summary="LSMDC: about 118,000 clips from 202 movies, one sentence each",
    splits="101,079 / 7,408 / 1,000 clips (the 2016 retrieval task's public test set)",
    protocol="t2v and v2t over the 1,000 public test pairs",
    frames=12,
    context_length=32,
    files="LSMDC16_annos_training.csv, LSMDC16_annos_val.csv, LSMDC16_challenge_1000_publictect.csv; "
    "avi/<movie>/<clip>.avi",
    source=SOURCE_URL,
    preset={"frames.num_frames": 12, "model.context_length": 32},
)


def read_lsmdc(root: str | Path) -> VideoDataset:
    """Read LSMDC from ``root`` (see the module docstring for files, splits and protocol)."""
    root = Path(root)
    skips = Skips()
    files: dict[str, Path] = {}
    missing = []
    for split, names in FILES.items():
        found = next((root / n for n in names if (root / n).is_file()), None)
        if found is None:
            missing.append((names[0], f"from {SOURCE_URL}"))
        else:
            files[split] = found
    paths = video_files((root / d for d in VIDEO_DIRS), recursive=True)
    if not paths:
        missing.append(("avi/<movie>/<clip>.avi", f"from {SOURCE_URL}, into {root / 'avi'}"))
    if missing:
        raise missing_files("lsmdc", root, missing)
    split_of: dict[str, str] = {}
    rows = []
    for split, path in files.items():
        clips: set[str] = set()
        for i, line in enumerate(lines(read_text(path)), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 6:
                reason = f"{len(fields)} tab-separated fields, expected 6"
                skips.add(path, f"line {i}", fields[0].strip(), reason)
                continue
            clip, text = fields[0].strip(), clean(" ".join(fields[5:]))  # a tab inside the sentence: a space
            if not text:
                skips.add(path, f"line {i}", clip, "empty sentence")
                continue
            if split == "test" and clip in clips:
                skips.add(path, f"line {i}", clip, "clip repeated in the test set (first kept)")
                continue
            clips.add(clip)
            if split_of.setdefault(clip, split) != split:
                raise DatasetError(f"{path}: line {i}: clip {clip!r} is also in {files[split_of[clip]].name}")
            rows.append((clip, text, split))
    if not rows:
        raise DatasetError(f"lsmdc: no sentence in the annotation files of {root}")
    return assemble("lsmdc", root, rows, paths, root / VIDEO_DIRS[1], skips, default_ext=".avi")
