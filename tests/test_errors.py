"""Known errors end a stage or CLI command with one line on stderr, status 2; blank captions are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.stages import stage_command

from discovla.errors import DiscoVLAError, exits_on_error, run_stage

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ the error classes


def test_known_errors_share_a_base_and_keep_their_own() -> None:
    from discovla.artifacts.features import FeaturesError
    from discovla.captioner import CaptionerUnavailable
    from discovla.clip_factory import BackboneError, BackboneUnavailable
    from discovla.config import ParamsError
    from discovla.data import DatasetError
    from discovla.data.shapes import ShapesError
    from discovla.ffmpeg import FFmpegNotFound
    from discovla.model.discovla import AdapterStateError
    from discovla.pretrain import PretrainError
    from discovla.text import CaptionsError

    value_errors = (
        FeaturesError,
        DatasetError,
        CaptionsError,
        AdapterStateError,
        ParamsError,
        PretrainError,
        ShapesError,
    )
    runtime_errors = (BackboneError, BackboneUnavailable, CaptionerUnavailable, FFmpegNotFound)
    for cls in value_errors + runtime_errors:
        assert issubclass(cls, DiscoVLAError), cls
    for cls in value_errors:
        assert issubclass(cls, ValueError), cls
    for cls in runtime_errors:
        assert issubclass(cls, RuntimeError), cls


def test_run_stage_prints_one_line_and_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["stage.py"])
    from discovla.artifacts.features import FeaturesError

    def main() -> None:
        raise FeaturesError("first line\n  second line")

    with pytest.raises(SystemExit) as exit_info:
        run_stage(main)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: first line; second line\n"


def test_run_stage_leaves_other_exceptions_and_results_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["stage.py"])

    def bug() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_stage(bug)
    assert exits_on_error(lambda x: x + 1)(1) == 2


# --------------------------------------------------------------------------------------- stage scripts


def _stage(script: str, cwd: Path, params: dict) -> subprocess.CompletedProcess:
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = stage_command(script.removesuffix(".py"))
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def _assert_one_error_line(res: subprocess.CompletedProcess, needle: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]


def test_evaluate_stage_without_features_exits_2(tmp_path: Path) -> None:
    res = _stage("evaluate.py", tmp_path, {})
    _assert_one_error_line(res, "data/features/meta.json not found")


@pytest.mark.parametrize(
    ("script", "params", "needle"),
    [
        ("pretrain_captioner.py", {}, "data/shapes/stills/train.parquet not found"),
        ("pretrain_clip.py", {"model": {"context_length": 40}}, "model.context_length: the tiny CLIP has"),
        ("pretrain_clip.py", {}, "stills"),
        ("captions.py", {}, "no frames shards"),
    ],
)
def test_stage_errors_go_through_run_stage(tmp_path: Path, script: str, params: dict, needle: str) -> None:
    _assert_one_error_line(_stage(script, tmp_path, params), needle)


def test_features_stage_with_a_blank_caption_exits_2(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ds", ["a red circle", "   ", "a blue square"])
    params = {"data": {"dataset": "folder", "root": str(root)}, "model": {"pretrained": ""}}
    res = _stage("features.py", tmp_path, params)
    _assert_one_error_line(res, f"{root / 'captions.csv'}: row 2 after the header")


def test_cli_command_exits_2_with_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from discovla.cli import app

    (tmp_path / "params.yaml").write_text("")
    args = [
        "ablate",
        "--params-file",
        str(tmp_path / "params.yaml"),
        "--features-dir",
        str(tmp_path / "none"),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'none'}/meta.json not found: run the features stage first (dvc repro features)"
    ]


# ------------------------------------------------------------------------------------- blank captions


def _folder(root: Path, captions: list[str]) -> Path:
    (root / "videos").mkdir(parents=True)
    n = len(captions)
    pd.DataFrame(
        {"video_id": [f"v{i}" for i in range(n)], "caption": captions, "split": ["train"] * n}
    ).to_csv(root / "captions.csv", index=False)
    return root


@pytest.mark.parametrize(
    ("captions", "row", "video"),
    [
        (["a red circle", "", "a blue square"], 2, "v1"),
        (["a red circle", "a blue square", " \t "], 3, "v2"),
        (["", "  "], 1, "v0"),
    ],
)
def test_folder_reader_names_the_first_blank_caption(
    tmp_path: Path, captions: list, row: int, video: str
) -> None:
    from discovla.data import DatasetError
    from discovla.data.registry import load_dataset

    root = _folder(tmp_path / "ds", captions)
    with pytest.raises(DatasetError) as err:
        load_dataset("folder", root)
    msg = str(err.value)
    assert msg.startswith(f"{root / 'captions.csv'}: row {row} after the header: ")
    assert f"video {video!r}" in msg and "empty or only whitespace" in msg
    blanks = sum(not c.strip() for c in captions)
    assert f"({blanks} such caption(s) in all)" in msg


def test_folder_reader_keeps_good_captions(tmp_path: Path) -> None:
    from discovla.data.registry import load_dataset

    ds = load_dataset("folder", _folder(tmp_path / "ds", ["a red circle", " a blue square "]))
    assert ds.captions.caption.tolist() == ["a red circle", " a blue square "]
