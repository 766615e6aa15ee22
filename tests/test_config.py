"""params.yaml validation: every bad file stops with one line naming the key, exit status 2.

These tests check behaviour, never today's values: params.yaml may be edited freely as long as it stays
valid, and the checks below are derived from the models in discovla/config.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from discovla.config import (
    FusionParams,
    Params,
    ParamsError,
    TrainParams,
    load_params,
    load_params_or_exit,
    params_from_dict,
)

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {name: field.annotation for name, field in Params.model_fields.items()}
KEYS = [(s, k, f) for s, model in SECTIONS.items() for k, f in model.model_fields.items()]


def _bounds(field: Any) -> dict[str, Any]:
    return {
        k: v for m in field.metadata for k in ("ge", "gt", "le") if (v := getattr(m, k, None)) is not None
    }


def _error(raw: Any) -> str:
    with pytest.raises(ParamsError) as err:
        params_from_dict(raw)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------------ the repo's params.yaml


def test_every_params_yaml_section_is_a_model_section_and_vice_versa() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) == set(SECTIONS)
    for section, values in raw.items():
        assert set(values) <= set(SECTIONS[section].model_fields), section
    assert all(isinstance(model, type) and issubclass(model, BaseModel) for model in SECTIONS.values())


def test_repo_params_load_every_key_as_written() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    p = load_params(REPO / "params.yaml")
    for section, values in raw.items():
        for key, value in values.items():
            got, tp = getattr(getattr(p, section), key), SECTIONS[section].model_fields[key].annotation
            assert got == value and type(got) is (tp if tp in (int, float, bool) else str), (section, key)


def test_repo_params_round_trip(tmp_path: Path) -> None:
    p = load_params(REPO / "params.yaml")
    assert params_from_dict(p.model_dump()) == p
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p.model_dump()))
    assert load_params(tmp_path / "params.yaml") == p


def test_defaults_are_valid_and_fill_in_missing_sections_and_keys(tmp_path: Path) -> None:
    defaults = Params()
    assert Params.model_validate(defaults.model_dump()) == defaults  # pydantic does not check defaults
    assert params_from_dict({}) == params_from_dict(None) == defaults
    p = params_from_dict({"fusion": {"alpha": 2.5}})
    assert p.fusion == FusionParams(alpha=2.5) and p.train == defaults.train
    (tmp_path / "params.yaml").write_text("fusion:\ntrain:\n  epochs: 3\n")  # a section with no keys
    p = load_params(tmp_path / "params.yaml")
    assert p.fusion == defaults.fusion and p.train == TrainParams(epochs=3)


def test_params_are_immutable() -> None:
    p = load_params(REPO / "params.yaml")
    for section in SECTIONS:
        with pytest.raises(ValidationError, match="frozen"):
            setattr(p, section, None)
    for section, key, _ in KEYS:
        with pytest.raises(ValidationError, match="frozen"):
            setattr(getattr(p, section), key, None)
    assert p == load_params(REPO / "params.yaml") and hash(p) == hash(load_params(REPO / "params.yaml"))


# ------------------------------------------------------------------------------------------------- types


def test_ints_become_floats_and_nothing_else_is_coerced() -> None:
    for section, key, field in KEYS:
        if field.annotation is float:
            value = _bounds(field).get("le", 1)  # an int inside the bounds
            got = getattr(getattr(params_from_dict({section: {key: int(value)}}), section), key)
            assert type(got) is float and got == int(value), (section, key)


@pytest.mark.parametrize(
    ("tp", "bad", "needle"),
    [
        (int, True, "expected an integer, got True"),
        (int, 8.0, "expected an integer, got 8.0"),
        (int, "8", "expected an integer, got '8'"),
        (float, False, "expected a number, got False"),
        (float, "0.5", "expected a number, got '0.5'"),
        (float, [1, 2], "expected a number, got [1, 2]"),
        (bool, 1, "expected true or false, got 1"),
        (bool, "yes", "expected true or false, got 'yes'"),
        (str, 3, "expected a string, got 3"),
    ],
)
def test_wrong_types_are_rejected_naming_the_key(tp: type, bad: Any, needle: str) -> None:
    keys = [(s, k) for s, k, f in KEYS if f.annotation is tp]
    assert keys
    for section, key in keys:
        assert _error({section: {key: bad}}) == f"{section}.{key}: {needle}"


# ---------------------------------------------------------------------------------------- bounds, choices


def test_bounds_are_inclusive_except_open_ones_and_name_the_key() -> None:
    checked = 0
    for section, key, field in KEYS:
        b, step = _bounds(field), 1 if field.annotation is int else 0.5
        for bound, inside, outside in [
            ("ge", b.get("ge"), None if "ge" not in b else b["ge"] - step),
            ("gt", None, b.get("gt")),
            ("le", b.get("le"), None if "le" not in b else b["le"] + step),
        ]:
            if inside is not None:
                assert getattr(getattr(params_from_dict({section: {key: inside}}), section), key) == inside
            if outside is not None:
                msg = _error({section: {key: outside}})
                assert msg.startswith(f"{section}.{key}: must be ") and msg.endswith(f", got {outside!r}")
                assert str(b[bound]) in msg, msg
                checked += 1
    assert checked > 20


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"frames": {"num_frames": 0}}, "frames.num_frames: must be >= 1 and <= 256, got 0"),
        ({"shapes": {"order_twin_fraction": 1.5}}, "shapes.order_twin_fraction: must be between 0.0 and 1.0"),
        ({"fusion": {"alpha": -1}}, "fusion.alpha: must be >= 0.0 and <= 100.0, got -1"),
        ({"train": {"lr": 0}}, "train.lr: must be > 0.0 and <= 1.0, got 0"),
        ({"train": {"grad_clip": -0.5}}, "train.grad_clip: must be >= 0.0, got -0.5"),
    ],
)
def test_bound_messages_say_what_is_allowed(raw: dict, message: str) -> None:
    assert _error(raw).startswith(message)


def test_choices_are_enforced_and_listed() -> None:
    literals = [(s, k, get_args(f.annotation)) for s, k, f in KEYS if get_args(f.annotation)]
    assert {(s, k) for s, k, _ in literals} >= {
        ("data", "dataset"),
        ("train", "sampling"),
        ("train", "device"),
    }
    for section, key, choices in literals:
        for choice in choices:
            assert getattr(getattr(params_from_dict({section: {key: choice}}), section), key) == choice
        expected = f"{section}.{key}: expected one of {', '.join(choices)}, got 'x'"
        assert _error({section: {key: "x"}}) == expected


def test_choice_message() -> None:
    assert _error({"train": {"sampling": "x"}}) == "train.sampling: expected one of pairs, videos, got 'x'"


# ------------------------------------------------------------------------------------ keys and structure


def test_unknown_keys_name_the_key_and_list_the_allowed_ones() -> None:
    for section, model in SECTIONS.items():
        expected = f"{section}.typo: unknown key (allowed: {', '.join(model.model_fields)})"
        assert _error({section: {"typo": 1}}) == expected
    assert _error({"fusoin": {"alpha": 0.3}}) == f"fusoin: unknown key (allowed: {', '.join(SECTIONS)})"


@pytest.mark.parametrize("bad", [3, "x", ["a", "b"], True])
def test_a_section_or_the_file_that_is_not_a_mapping(bad: Any) -> None:
    for section in SECTIONS:
        assert _error({section: bad}) == f"{section}: expected a mapping, got {bad!r}"
    assert _error(bad) == f"params: expected a mapping, got {bad!r}"


def test_load_params_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "missing.yaml")
    (tmp_path / "params.yaml").write_text("frames:\n  num_frames: [\n")
    with pytest.raises(ParamsError, match=r"^line \d+: is not valid YAML$"):
        load_params(tmp_path / "params.yaml")
    assert load_params_or_exit(REPO / "params.yaml") == load_params(REPO / "params.yaml")


# --------------------------------------------------------------------------------------- stage scripts


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("frames:\n  num_frames: -3\n", "frames.num_frames: must be >= 1"),
        ("frames:\n  num_frames: 8\n  extra: 1\n", "frames.extra: unknown key"),
        ("fusion: {alpha: [1, 2]}\n", "fusion.alpha: expected a number"),
        ("train: {epochs: true}\n", "train.epochs: expected an integer, got True"),
        ("train: {sampling: captions}\n", "train.sampling: expected one of pairs, videos, got 'captions'"),
        ("frames: [\n", "is not valid YAML"),
        (None, "file not found"),
    ],
)
def test_stage_exits_2_with_one_line(tmp_path: Path, content: str | None, needle: str) -> None:
    if content is not None:
        (tmp_path / "params.yaml").write_text(content)
    code = "from discovla.config import load_params_or_exit; load_params_or_exit()"
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: params.yaml: ") and needle in lines[0], lines[0]
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
