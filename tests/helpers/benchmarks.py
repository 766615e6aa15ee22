"""Tiny copies of MSVD, DiDeMo, ActivityNet Captions and LSMDC in their released file formats, with the odd
rows those files really have: empty sentences, missing videos, repeated ids, unicode, short lines.

Each ``write_*`` writes the annotation files under ``root`` and calls ``make_video(path)`` for every video
file that exists (the tests pass an empty-file writer for the readers, or an ffmpeg clip writer for the
pipeline). Each returns what a correct reader must find.
"""

from __future__ import annotations

import json
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

MakeVideo = Callable[[Path], None]
UNICODE = "un café crème — 猫 🎥"


def empty_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def ffmpeg_clip(path: Path) -> None:
    """A real 1-second 48 px clip in the container ``path``'s extension names, its hue set by its name."""
    from discovla.ffmpeg import ffmpeg_exe

    path.parent.mkdir(parents=True, exist_ok=True)
    hue = zlib.crc32(path.name.encode()) % 360
    src = f"testsrc=size=48x48:rate=10:duration=1,hue=h={hue}"
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", src, "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def write_msvd(root: Path, make_video: MakeVideo = empty_file, form: str = "txt") -> dict:
    """MSVD with split lists and captions as ``AllVideoDescriptions.txt`` (``form="txt"``),
    ``raw-captions.json`` (``"json"``) or the corpus CSV (``"csv"``, which also brings other languages)."""
    root.mkdir(parents=True, exist_ok=True)
    train = [f"clipA{i}_{i}_{i + 5}" for i in range(6)]
    val = ["clipV0_0_4", "clipV1_2_9"]
    test = ["clipT0_1_6", "clipT1_0_3", "clipT2_4_8"]
    caps = {c: [f"a clip {c} shows thing {k}" for k in range(3)] for c in train + val + test}
    caps[train[0]][1] = UNICODE
    (root / "train_list.txt").write_text("\n".join([*train, "clipNoCaptions_0_1"]) + "\n")
    (root / "val_list.txt").write_text("\n".join(val) + "\n")
    (root / "test_list.txt").write_text("\n".join([*test, test[0]]) + "\n")  # a test clip listed twice
    if form == "txt":
        lines = ["# MSVD descriptions", "# clip sentence"]
        for c, cs in caps.items():
            lines += [f"{c} {s}" for s in cs]
        lines.insert(4, f"{train[1]}")  # a line with a clip and no sentence
        lines.insert(6, f"{train[1]}    ")  # and one with only spaces after it
        (root / "AllVideoDescriptions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        empty = 2
    elif form == "json":
        data = {c: list(cs) for c, cs in caps.items()}
        data[train[2]].append("   ")
        data[train[3]] = [s.split() for s in data[train[3]]]  # tokenised form, as some conversions write
        (root / "raw-captions.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        empty = 1
    else:
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(
            ["VideoID", "Start", "End", "WorkerID", "Source", "AnnotationTime", "Language", "Description"]
        )
        for c, cs in caps.items():
            vid, start, end = c.rsplit("_", 2)
            for s in cs:
                w.writerow([vid, start, end, "7", "clean", "20", "English", s])
            w.writerow([vid, start, end, "8", "clean", "21", "French", "une phrase"])
        w.writerow(["broken", "x", "3", "9", "clean", "1", "English", "bad start"])
        w.writerow(
            [train[4].rsplit("_", 2)[0], *train[4].rsplit("_", 2)[1:], "9", "clean", "1", "English", ""]
        )
        (root / "MSR Video Description Corpus.csv").write_text(buf.getvalue(), encoding="utf-8")
        empty = 1
    for c in train + val + test[:-1]:  # the last test clip's video is missing
        make_video(root / "YouTubeClips" / f"{c}.avi")
    return {
        "videos": {"train": 6, "val": 2, "test": 3},
        "captions": {"train": 18, "val": 6, "test": 9},
        "empty": empty,
        "missing": test[-1],
        "unicode_clip": train[0],
    }


def write_didemo(root: Path, make_video: MakeVideo = empty_file) -> dict:
    """DiDeMo: videos named with their original extension in the JSON, converted to .mp4 on disk."""
    root.mkdir(parents=True, exist_ok=True)

    def moments(video: str, texts: list[str]) -> list[dict]:
        return [
            {"video": video, "description": t, "times": [[k, k + 1]], "annotation_id": k, "dl_link": "x"}
            for k, t in enumerate(texts)
        ]

    train = moments("11@N0_1_aa.mov", ["the man walks in", "he sits down", UNICODE])
    train += moments("22@N0_2_bb.mp4", ["a dog runs", ""])  # an empty description
    train += [dict(train[0])]  # an exact repeat (kept, as CLIP4Clip keeps it)
    train += [{"description": "no video name", "times": [[0, 0]]}]
    train += moments("33@N0_3_cc.3gp", ["a car passes", "it stops"])
    val = moments("44@N0_4_dd.mov", ["birds fly", "they land"])
    test = moments("55@N0_5_ee.mov", ["first the light is on", "then it goes off"])
    test += moments("66@N0_6_ff.avi", ["a missing video"])
    for name, data in (("train_data.json", train), ("val_data.json", val), ("test_data.json", test)):
        (root / name).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    for stem in ("11@N0_1_aa", "22@N0_2_bb", "33@N0_3_cc", "44@N0_4_dd", "55@N0_5_ee"):
        make_video(root / "videos" / f"{stem}.mp4")
    return {
        "videos": {"train": 3, "val": 1, "test": 2},
        "paragraph": ("11@N0_1_aa", f"the man walks in he sits down {UNICODE} the man walks in"),
        "test_paragraph": ("55@N0_5_ee", "first the light is on then it goes off"),
        "missing": "66@N0_6_ff",
    }


def write_activitynet(root: Path, make_video: MakeVideo = empty_file) -> dict:
    """ActivityNet Captions with 21 train videos (so that the every-20th val carve-out takes two)."""
    root.mkdir(parents=True, exist_ok=True)

    def ann(sentences: list[str]) -> dict:
        return {
            "duration": 10.0,
            "timestamps": [[i, i + 1.0] for i in range(len(sentences))],
            "sentences": sentences,
        }

    train = {f"v_tr{i:02d}": ann([f" a person does step {i} .", " then another step ."]) for i in range(21)}
    train["v_tr01"] = ann([" someone cooks .", "  ", f" {UNICODE} "])  # an empty sentence in the middle
    text = json.dumps(train, ensure_ascii=False)[:-1]
    text += ', "v_tr02": {"sentences": ["a repeated key"]}'  # a key repeated in the file
    text += ', "tr03": {"sentences": ["the same video without its prefix"]}'
    text += ', "v_empty": {"duration": 3, "timestamps": [[0, 1]], "sentences": [""]}'
    text += ', "v_badstamps": {"duration": 3, "timestamps": [[0, 1]], "sentences": ["a", "b"]}'
    text += ', "v_notlist": {"sentences": "just a string"}'
    text += ', "v_v_xyz": {"sentences": ["a YouTube id that starts with v_"]}}'
    (root / "train.json").write_text(text, encoding="utf-8")
    val1 = {
        "v_te0": ann([" the first thing .", " the second thing ."]),
        "te1": ann([" a video named without v_ ."]),
    }
    val1["v_te2"] = ann(["its video is missing ."])
    (root / "val_1.json").write_text(json.dumps(val1), encoding="utf-8")
    for i in range(21):
        make_video(root / "videos" / (f"v_tr{i:02d}.mp4" if i % 2 else f"tr{i:02d}.mkv"))
    make_video(root / "videos" / "v_xyz.mp4")  # the unprefixed file of v_v_xyz
    make_video(root / "videos" / "v_te0.mp4")
    make_video(root / "videos" / "te1.webm")
    return {
        "videos": {"train": 20, "val": 2, "test": 3},
        "prefixed_youtube_id": "v_v_xyz",
        "paragraph": ("v_tr01", f"someone cooks . {UNICODE}"),
        "test_paragraph": ("v_te0", "the first thing . the second thing ."),
        "unprefixed": "v_te1",
        "missing": "v_te2",
    }


def write_lsmdc(root: Path, make_video: MakeVideo = empty_file) -> dict:
    """LSMDC: tab-separated lines, clip ids with dots, one folder per movie."""
    root.mkdir(parents=True, exist_ok=True)

    def clip(movie: int, k: int) -> str:
        return f"{movie:04d}_Movie_{movie}_00.00.{k:02d}.100-00.00.{k + 1:02d}.200"

    def line(c: str, text: str) -> str:
        return "\t".join([c, "00.00.01.000", "00.00.02.000", "00.00.01.000", "00.00.02.000", text])

    train = [clip(1, k) for k in range(5)]
    val = [clip(2, k) for k in range(2)]
    test = [clip(3, k) for k in range(3)]
    tr = [line(c, f"SOMEONE does thing {i}.") for i, c in enumerate(train)]
    tr.append(line(train[0], f'SOMEONE says "{UNICODE}".'))  # a second sentence for a clip
    tr.append(tr[1])  # an exact repeat (kept, as CLIP4Clip keeps it)
    tr.append(line(train[4], "He says\u2028hi.") + "\t")  # a line separator inside, a trailing tab
    tr.append(line(train[2], "   "))  # an empty sentence
    tr.append("\t".join([train[3], "00.00.01.000", "only three fields"]))
    (root / "LSMDC16_annos_training.csv").write_text("\n".join(tr) + "\n", encoding="utf-8")
    (root / "LSMDC16_annos_val.csv").write_text("\n".join(line(c, "val sentence.") for c in val) + "\n")
    te = [line(c, f"test sentence {i}.") for i, c in enumerate(test)] + [line(test[0], "a second one.")]
    (root / "LSMDC16_challenge_1000_publictect.csv").write_text("\n".join(te) + "\n")
    for c in train + val + test[:-1]:
        make_video(root / "avi" / c.split("_00.")[0] / f"{c}.avi")
    return {
        "videos": {"train": 5, "val": 2, "test": 3},
        "captions": {"train": 8, "val": 2, "test": 3},
        "unicode_clip": train[0],
        "separator_clip": train[4],
        "missing": test[-1],
    }


WRITERS = {"msvd": write_msvd, "didemo": write_didemo, "activitynet": write_activitynet, "lsmdc": write_lsmdc}
