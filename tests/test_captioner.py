"""The BLIP captioner wrapper: caption normalisation and loading (offline hub ids, bad local directories),
and the weight-free check a Ray driver makes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from discovla.captioner import CaptionerUnavailable, check_captioner, load_captioner
from discovla.text import normalize_caption


def test_normalize_caption() -> None:
    assert normalize_caption("  A Red  circle ,\tat the TOP \n") == "a red circle, at the top"


def test_hub_id_offline_fails_with_one_clear_message(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(CaptionerUnavailable) as err:
        load_captioner("Salesforce/blip-image-captioning-base", "cpu")
    msg = str(err.value)
    assert "download Salesforce/blip-image-captioning-base --local-dir models/blip-base" in msg
    assert "captioner.model: models/blip-base" in msg and "\n" not in msg


def test_missing_or_broken_local_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CaptionerUnavailable, match="not found"):
        load_captioner(str(tmp_path / "nope"), "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptionerUnavailable, match="save_pretrained"):
        load_captioner(str(tmp_path / "empty"), "cpu")
    with pytest.raises(CaptionerUnavailable, match="oracle"):
        load_captioner("oracle", "cpu")


def test_check_reads_no_weights_and_says_what_loading_would(tmp_path, monkeypatch) -> None:
    """check_captioner: the same one-line errors as load_captioner, but a directory without its weights
    passes (only the config and processor are read), where loading it fails."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for bad, match in ((str(tmp_path / "nope"), "not found"), ("oracle", "oracle")):
        with pytest.raises(CaptionerUnavailable, match=match):
            check_captioner(bad)
    with pytest.raises(CaptionerUnavailable, match="not available offline"):
        check_captioner("Salesforce/blip-image-captioning-base")
    tiny = Path(__file__).resolve().parents[1] / "models/tiny-blip"
    shutil.copytree(tiny, tmp_path / "blip", ignore=shutil.ignore_patterns("*.safetensors"))
    check_captioner(str(tmp_path / "blip"))
    with pytest.raises(CaptionerUnavailable, match="save_pretrained"):
        load_captioner(str(tmp_path / "blip"), "cpu")
