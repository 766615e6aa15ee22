"""The BLIP captioner wrapper: caption normalisation and loading (offline hub ids, bad local directories)."""

from __future__ import annotations

import pytest

from discovla.captioner import CaptionerUnavailable, load_captioner
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
