"""params.yaml validation: every bad file stops with one line naming the key, exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from discovla.config import ParamsError, load_params, params_from_dict

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_load_every_key_as_written_and_are_frozen() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    p = load_params(REPO / "params.yaml")
    for section, values in raw.items():
        for key, value in values.items():
            assert getattr(getattr(p, section), key) == value, f"{section}.{key}"
    with pytest.raises(AttributeError):
        p.fusion.alpha = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"frames": {"num_frames": 0}}, "frames.num_frames: must be >= 1"),
        ({"frames": {"num_frames": "eight"}}, "frames.num_frames: expected an integer"),
        ({"frames": {"num_frames": 8.5}}, "frames.num_frames: expected an integer"),
        ({"frames": {"nmu_frames": 8}}, "frames.nmu_frames: unknown key"),
        ({"fusoin": {"alpha": 0.3}}, "fusoin: unknown key"),
        ({"fusion": {"alpha": -0.1}}, "fusion.alpha: must be"),
        ({"fusion": {"enabled": "yes"}}, "fusion.enabled: expected true or false"),
        ({"fusion": {"distill_scale": "batch"}}, "fusion.distill_scale: expected one of reference, mean"),
        ({"train": {"lr": 0}}, "train.lr: must be > 0"),
        ({"train": {"device": "tpu"}}, "train.device: expected one of"),
        ({"train": {"sampling": "captions"}}, "train.sampling: expected one of pairs, videos"),
        ({"train": {"augment": "autoaugment"}}, "train.augment: expected one of none, randaugment"),
        ({"data": {"dataset": "kinetics"}}, "data.dataset: expected one of shapes, folder, msrvtt"),
        ({"shapes": {"order_twin_fraction": 1.5}}, "shapes.order_twin_fraction: must be between 0.0 and 1.0"),
        ({"train": ["a", "b"]}, "train: expected a mapping"),
    ],
)
def test_bad_values_name_the_key(raw: dict, needle: str) -> None:
    with pytest.raises(ParamsError) as err:
        params_from_dict(raw)
    msg = str(err.value)
    assert needle in msg
    assert "\n" not in msg


def test_ints_are_accepted_for_floats_and_defaults_fill_in() -> None:
    p = params_from_dict({"fusion": {"alpha": 1}})
    assert isinstance(p.fusion.alpha, float) and p.fusion.alpha == 1.0
    assert p.train.epochs == 5


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("frames:\n  num_frames: -3\n", "frames.num_frames"),
        ("frames:\n  num_frames: 8\n  extra: 1\n", "frames.extra: unknown key"),
        ("fusion: {alpha: [1, 2]}\n", "fusion.alpha: expected a number"),
        ("frames: [\n", "is not valid YAML"),
    ],
)
def test_stage_exits_2_with_one_line(tmp_path: Path, content: str, needle: str) -> None:
    (tmp_path / "params.yaml").write_text(content)
    code = "from discovla.config import load_params_or_exit; load_params_or_exit()"
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert needle in lines[0]
    assert "Traceback" not in res.stderr


def test_every_params_section_is_declared_in_dvc_yaml() -> None:
    """Each stage lists params that exist; every section is read by some stage."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    used = set()
    for stage in dvc["stages"].values():
        for entry in stage.get("params", []):
            section, _, key = entry.partition(".")
            assert section in raw, entry
            if key:
                assert key in raw[section], entry
            used.add(section)
    assert used == set(raw)
