"""MSRVTT reader on a tiny fake CLIP4Clip layout."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from discovla.data import DatasetError
from discovla.data.msrvtt import read_msrvtt, val_video_ids
from discovla.data.registry import load_dataset

TRAIN = [f"video{i}" for i in range(0, 45)]
TEST = [f"video{i}" for i in range(45, 50)]


def make_layout(root: Path, video_dir: str = "videos") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    sentences = [
        {"video_id": v, "caption": f" caption {k} of {v} ", "sen_id": i * 3 + k}
        for i, v in enumerate(TRAIN + TEST)
        for k in range(3)
    ]
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": sentences}))
    pd.DataFrame({"video_id": TRAIN}).to_csv(root / "MSRVTT_train.9k.csv", index=False)
    pd.DataFrame(
        {
            "key": [f"ret{i}" for i in range(len(TEST))],
            "vid_key": [f"msr{v[5:]}" for v in TEST],
            "video_id": TEST,
            "sentence": [f"test sentence for {v}" for v in TEST],
        }
    ).to_csv(root / "MSRVTT_JSFUSION_test.csv", index=False)
    vd = root / video_dir
    vd.mkdir(parents=True)
    for v in TRAIN + TEST[:-1]:  # the last test video is missing on purpose
        (vd / f"{v}.mp4").write_bytes(b"")
    return root


def test_reads_splits_and_captions(tmp_path: Path) -> None:
    ds = load_dataset("msrvtt", make_layout(tmp_path / "m"))
    assert ds.name == "msrvtt"
    by_split = ds.videos.groupby("split").video_id.apply(set)
    val = {f"video{i}" for i in (0, 20, 40)}  # natural order: every 20th starting with the first
    assert by_split["val"] == val == val_video_ids(TRAIN)
    assert by_split["train"] == set(TRAIN) - val
    assert by_split["test"] == set(TEST)
    caps = ds.captions
    assert caps.caption_id.tolist() == list(range(len(caps)))
    assert caps[caps.split == "train"].groupby("video_id").size().eq(3).all()
    assert len(caps[caps.split == "val"]) == 9
    test = caps[caps.split == "test"]
    assert test.video_id.tolist() == TEST and test.caption.iloc[0] == "test sentence for video45"
    assert not caps.caption.str.startswith(" ").any()
    # test captions come from JSFUSION only, not from the json sentences of test videos
    assert not caps[caps.video_id.isin(TEST)].caption.str.startswith("caption").any()
    assert ds.videos.path.str.endswith(".mp4").all()
    assert ds.split("test").videos.video_id.tolist() == TEST


def test_val_order_is_natural() -> None:
    ids = [f"video{i}" for i in (10, 2, 1, 100, 30)]
    assert val_video_ids(ids, every=2) == {"video1", "video10", "video100"}


def test_frozen_in_time_video_folder(tmp_path: Path) -> None:
    ds = read_msrvtt(make_layout(tmp_path / "m", video_dir="MSRVTT/videos/all"))
    assert ds.videos.path.str.contains("MSRVTT/videos/all/").all()


def test_missing_files_are_named(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DatasetError) as err:
        read_msrvtt(root)
    msg = str(err.value)
    for name in ("MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv", "videos/", str(root)):
        assert name in msg
    assert "CLIP4Clip" in msg and "MSRVTT.zip" in msg


def test_bad_content_is_reported(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "m")
    pd.DataFrame({"vid": TRAIN}).to_csv(root / "MSRVTT_train.9k.csv", index=False)
    with pytest.raises(DatasetError, match="missing column"):
        read_msrvtt(root)
    pd.DataFrame({"video_id": TRAIN + ["video45"]}).to_csv(root / "MSRVTT_train.9k.csv", index=False)
    with pytest.raises(DatasetError, match="also in"):
        read_msrvtt(root)
    pd.DataFrame({"video_id": TRAIN}).to_csv(root / "MSRVTT_train.9k.csv", index=False)
    (root / "MSRVTT_data.json").write_text(json.dumps({"sentences": []}))
    with pytest.raises(DatasetError, match="no sentences"):
        read_msrvtt(root)
    (root / "MSRVTT_data.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_msrvtt(root)


def test_blank_captions_are_named(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "m")
    data = json.loads((root / "MSRVTT_data.json").read_text())
    data["sentences"][4]["caption"] = "  "  # video1, a train video
    data["sentences"][-1]["caption"] = ""  # a test video's json sentence: not used, not checked
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    first = r"MSRVTT_data.json: sentences\[4\]: the caption of video 'video1' is empty"
    with pytest.raises(DatasetError, match=first):
        read_msrvtt(root)
    data["sentences"][4]["caption"] = None
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"sentences\[4\]"):
        read_msrvtt(root)
    data["sentences"][4]["caption"] = "fixed"
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    test = pd.read_csv(root / "MSRVTT_JSFUSION_test.csv")
    test.loc[2, "sentence"] = " "
    test.to_csv(root / "MSRVTT_JSFUSION_test.csv", index=False)
    with pytest.raises(DatasetError, match=r"MSRVTT_JSFUSION_test.csv: row 3 after the header: .*'video47'"):
        read_msrvtt(root)
