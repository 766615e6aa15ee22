"""The MSVD, DiDeMo, ActivityNet Captions and LSMDC readers on tiny copies in their released formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from discovla.cli import app
from discovla.data import DatasetError
from discovla.data.check import check_dataset
from discovla.data.registry import available, dataset_info, load_dataset
from tests.helpers.benchmarks import (
    UNICODE,
    WRITERS,
    write_activitynet,
    write_didemo,
    write_lsmdc,
    write_msvd,
)

BENCHMARKS = ("msvd", "didemo", "activitynet", "lsmdc")


def _counts(ds, what: str) -> dict[str, int]:
    df = ds.videos if what == "videos" else ds.captions
    return {s: int((df.split == s).sum()) for s in ("train", "val", "test")}


def _reasons(ds) -> dict[str, int]:
    return ds.skipped.reason.value_counts().to_dict()


@pytest.mark.parametrize("form", ["txt", "json", "csv"])
def test_msvd_reads_every_caption_form(tmp_path: Path, form: str) -> None:
    want = write_msvd(tmp_path / "msvd", form=form)
    ds = load_dataset("msvd", tmp_path / "msvd")
    assert _counts(ds, "videos") == want["videos"]
    assert _counts(ds, "captions") == want["captions"]  # every caption of a test clip is a query
    assert ds.captions.caption_id.is_unique and (ds.captions.caption.str.strip() != "").all()
    reasons = _reasons(ds)
    assert reasons["empty caption"] == want["empty"]
    assert reasons["listed twice (repeat ignored)"] == 1
    assert reasons["train clip without any caption"] == 1
    assert set(ds.videos.video_id) == set(ds.captions.video_id)
    test_caps = ds.captions[ds.captions.split == "test"].groupby("video_id").size()
    assert (test_caps == 3).all()  # multi-caption test set
    missing = ds.videos.set_index("video_id").path[want["missing"]]
    assert not Path(missing).exists() and missing.endswith(".avi")  # kept: the frames stage records it
    if form != "csv":
        assert UNICODE in set(ds.captions.caption[ds.captions.video_id == want["unicode_clip"]])
    if form == "json":
        assert "a clip clipA3_3_8 shows thing 0" in set(ds.captions.caption)  # token lists joined
    if form == "csv":
        assert "une phrase" not in set(ds.captions.caption)  # English only
        assert any(r.startswith("start/end") for r in reasons)


def test_msvd_split_from_the_youtube_mapping(tmp_path: Path) -> None:
    root = tmp_path / "msvd"
    write_msvd(root)
    for f in ("train_list.txt", "val_list.txt", "test_list.txt"):
        (root / f).unlink()
    clips = ["clipA0_0_5", "clipV0_0_4", "clipT0_1_6"]
    mapping = zip(clips, (7, 1250, 1500), strict=True)
    (root / "youtube_mapping.txt").write_text("\n".join(f"{c} vid{n}" for c, n in mapping))
    ds = load_dataset("msvd", root)
    split = dict(zip(ds.videos.video_id, ds.videos.split, strict=True))
    assert split == dict(zip(clips, ("train", "val", "test"), strict=True))
    (root / "youtube_mapping.txt").write_text("clipA0_0_5 video7\n")
    with pytest.raises(DatasetError, match="line 1: expected '<clip> vid<N>'"):
        load_dataset("msvd", root)


def test_msvd_never_unpickles_and_says_how_to_convert(tmp_path: Path) -> None:
    root = tmp_path / "msvd"
    write_msvd(root)
    (root / "AllVideoDescriptions.txt").unlink()
    (root / "raw-captions.pkl").write_bytes(b"\x80\x04not really a pickle")  # would fail if loaded
    with pytest.raises(DatasetError, match=r"never loads.*raw-captions\.json.*pickle\.load"):
        load_dataset("msvd", root)


def test_msvd_clip_in_two_split_lists_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "msvd"
    write_msvd(root)
    with (root / "val_list.txt").open("a") as f:
        f.write("clipA0_0_5\n")
    with pytest.raises(DatasetError, match=r"val_list\.txt: line 3: clip 'clipA0_0_5' is also in the train"):
        load_dataset("msvd", root)


def test_didemo_paragraphs(tmp_path: Path) -> None:
    want = write_didemo(tmp_path / "d")
    ds = load_dataset("didemo", tmp_path / "d")
    assert _counts(ds, "videos") == want["videos"]
    assert _counts(ds, "captions") == want["videos"]  # one paragraph per video
    text = dict(zip(ds.captions.video_id, ds.captions.caption, strict=True))
    assert text[want["paragraph"][0]] == want["paragraph"][1]
    assert text[want["test_paragraph"][0]] == want["test_paragraph"][1]
    assert text["22@N0_2_bb"] == "a dog runs"
    paths = dict(zip(ds.videos.video_id, ds.videos.path, strict=True))
    assert (
        paths["11@N0_1_aa"].endswith("11@N0_1_aa.mp4") and Path(paths["11@N0_1_aa"]).exists()
    )  # .mov -> .mp4
    assert not Path(paths[want["missing"]]).exists()
    assert _reasons(ds) == {"empty description": 1, "moment without a video name": 1}


def test_didemo_video_in_two_splits_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_didemo(root)
    test = json.loads((root / "test_data.json").read_text())
    test.append({"video": "11@N0_1_aa.mov", "description": "leak", "times": [[0, 1]]})
    (root / "test_data.json").write_text(json.dumps(test))
    with pytest.raises(DatasetError, match="video '11@N0_1_aa' is also in train_data.json"):
        load_dataset("didemo", root)


def test_activitynet_paragraphs_ids_and_val_carve_out(tmp_path: Path) -> None:
    want = write_activitynet(tmp_path / "a")
    ds = load_dataset("activitynet", tmp_path / "a")
    assert _counts(ds, "videos") == want["videos"]
    assert set(ds.videos.video_id[ds.videos.split == "val"]) == {"v_tr00", "v_tr20"}  # every 20th, sorted
    text = dict(zip(ds.captions.video_id, ds.captions.caption, strict=True))
    assert text[want["paragraph"][0]] == want["paragraph"][1]
    assert text[want["test_paragraph"][0]] == want["test_paragraph"][1]
    assert text["v_tr02"] == "a person does step 2 . then another step ."  # the first of a repeated key
    assert text["v_tr03"] != "the same video without its prefix"
    paths = dict(zip(ds.videos.video_id, ds.videos.path, strict=True))
    assert paths["v_tr00"].endswith("tr00.mkv") and paths[want["unprefixed"]].endswith("te1.webm")
    assert not Path(paths[want["missing"]]).exists()
    assert paths[want["prefixed_youtube_id"]].endswith("/v_xyz.mp4")  # YouTube id v_xyz, file unprefixed
    reasons = _reasons(ds)
    assert reasons == {
        "empty sentence": 2,
        "key repeated in the file (first kept)": 1,
        "same video as another key of the file (first kept)": 1,
        "no non-empty sentence": 1,
        "timestamps do not pair with the sentences": 1,
        "sentences is not a list of strings": 1,
    }


def test_activitynet_video_in_train_and_test_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "a"
    write_activitynet(root)
    val1 = json.loads((root / "val_1.json").read_text())
    val1["tr05"] = {"sentences": ["a leak"]}
    (root / "val_1.json").write_text(json.dumps(val1))
    with pytest.raises(DatasetError, match="video 'v_tr05' is also in train.json"):
        load_dataset("activitynet", root)


def test_lsmdc_reads_tab_separated_files(tmp_path: Path) -> None:
    want = write_lsmdc(tmp_path / "l")
    ds = load_dataset("lsmdc", tmp_path / "l")
    assert _counts(ds, "videos") == want["videos"]
    assert _counts(ds, "captions") == want["captions"]
    assert f'SOMEONE says "{UNICODE}".' in set(
        ds.captions.caption[ds.captions.video_id == want["unicode_clip"]]
    )
    paths = dict(zip(ds.videos.video_id, ds.videos.path, strict=True))
    assert Path(paths[want["unicode_clip"]]).exists() and "/avi/0001_Movie_1/" in paths[want["unicode_clip"]]
    assert not Path(paths[want["missing"]]).exists()
    assert "He says hi." in set(ds.captions.caption[ds.captions.video_id == want["separator_clip"]])
    assert _reasons(ds) == {
        "empty sentence": 1,
        "3 tab-separated fields, expected 6": 1,
        "clip repeated in the test set (first kept)": 1,
    }
    row = ds.skipped[ds.skipped.reason.str.startswith("3 tab")].iloc[0]
    assert row.file.endswith("LSMDC16_annos_training.csv") and row.row == "line 10"


@pytest.mark.parametrize("name", BENCHMARKS)
def test_missing_files_are_named_with_their_source(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset(name, tmp_path / "nothing")
    msg = str(info.value)
    assert msg.startswith(f"{name}: missing under ") and "http" in msg
    first = dataset_info(name).files.split(",")[0].split(" ")[0]
    assert first in msg


@pytest.mark.parametrize("name", BENCHMARKS)
def test_non_utf8_annotations_are_an_error(tmp_path: Path, name: str) -> None:
    root = tmp_path / name
    WRITERS[name](root)
    target = {
        "msvd": "AllVideoDescriptions.txt",
        "didemo": "val_data.json",
        "activitynet": "val_1.json",
        "lsmdc": "LSMDC16_annos_val.csv",
    }[name]
    (root / target).write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(DatasetError, match=f"{target}: not UTF-8 text"):
        load_dataset(name, root)


def test_datasets_lists_all_with_protocols() -> None:
    assert set(available()) >= {"shapes", "folder", "msrvtt", *BENCHMARKS}
    res = CliRunner().invoke(app, ["datasets"])
    assert res.exit_code == 0, res.output
    for name in ("shapes", "msrvtt", *BENCHMARKS):
        assert f"\n{name}: " in "\n" + res.output
    assert "dvc exp run -S data.dataset=didemo -S data.root=data/didemo -S frames.num_frames=64" in res.output
    assert "paragraph-to-video" in res.output and "multi-caption" in res.output


@pytest.mark.parametrize("name", BENCHMARKS)
def test_datasets_check_reports_what_it_read(tmp_path: Path, name: str) -> None:
    want = WRITERS[name](tmp_path / name)
    out = tmp_path / "check.json"
    res = CliRunner().invoke(app, ["datasets", "check", name, str(tmp_path / name), "--json", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report == check_dataset(name, tmp_path / name)
    assert {s: v["videos"] for s, v in report["splits"].items()} == want["videos"]
    assert report["missing_videos_total"] == 1 and report["splits"]["test"]["missing_videos"] == 1
    assert report["skipped_rows_total"] == sum(v["count"] for v in report["skipped_rows"].values()) > 0
    assert f"{want['videos']['test']:>7,} videos" in res.output and "skipped annotation rows" in res.output


def test_datasets_check_fails_with_one_error_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["datasets", "check", "lsmdc", str(tmp_path)])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: lsmdc: missing under ")


def test_context_length_beyond_77_names_the_key() -> None:
    from discovla.config import ParamsError, params_from_dict

    with pytest.raises(ParamsError, match="model.context_length"):
        params_from_dict({"model": {"context_length": 78}})
    assert params_from_dict({"model": {"context_length": 64}}).model.context_length == 64


def test_paragraph_context_on_a_shorter_clip_names_the_key() -> None:
    """The DiDeMo/ActivityNet preset (64 tokens) on the shapes world's tiny CLIP (32): one clear error."""
    from discovla.backbone import BackboneError, load_backbone

    ctx = dataset_info("didemo").preset["model.context_length"]
    with pytest.raises(BackboneError, match=f"model.context_length: must be between 2 and 32 .* got {ctx}"):
        load_backbone("tiny-clip", None, context_length=ctx)
