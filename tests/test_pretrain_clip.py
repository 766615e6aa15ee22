"""Tiny-CLIP pretraining: data loading, augmentation, a real short training run, the stage."""

from __future__ import annotations

import io
import json
import os
import subprocess
from dataclasses import asdict
from pathlib import Path

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers.stages import stage_command
from PIL import Image

from discovla.backbone import load_backbone
from discovla.clip_factory import save_clip
from discovla.pretrain import (
    PretrainConfig,
    PretrainError,
    Stills,
    load_stills,
    random_shift,
    train_tiny_clip,
)

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _write_stills(path: Path, n: int, seed: int = 0, size: int = 64) -> list[str]:
    """Stills of one coloured square on noise; caption names the colour and the side (left / right)."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for i in range(n):
        colour = list(COLOURS)[i % 4]
        side = "left" if (i // 4) % 2 == 0 else "right"
        img = rng.integers(0, 40, size=(size, size, 3), dtype=np.uint8)
        x0 = 4 if side == "left" else size // 2 + 4
        img[size // 3 : size // 3 + 20, x0 : x0 + 20] = COLOURS[colour]
        images.append(_png(img))
        captions.append(f"a {colour} square on the {side}")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "caption": captions}), path)
    return captions


def test_load_stills_resizes_with_pil_bicubic(tmp_path: Path) -> None:
    captions = _write_stills(tmp_path / "s.parquet", 6)
    stills = load_stills(tmp_path / "s.parquet", 32)
    assert stills.pixels.shape == (6, 3, 32, 32) and stills.pixels.dtype == torch.uint8
    assert stills.captions == captions
    first = pq.read_table(tmp_path / "s.parquet").column("image")[0].as_py()
    expected = np.asarray(
        Image.open(io.BytesIO(first)).convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)
    )
    assert np.array_equal(stills.pixels[0].permute(1, 2, 0).numpy(), expected)


def test_load_stills_errors(tmp_path: Path) -> None:
    with pytest.raises(PretrainError, match="not found"):
        load_stills(tmp_path / "missing.parquet", 32)
    pq.write_table(pa.table({"caption": ["a"]}), tmp_path / "bad.parquet")
    with pytest.raises(PretrainError, match="image"):
        load_stills(tmp_path / "bad.parquet", 32)


def test_distinct_keeps_first_still_per_caption() -> None:
    stills = Stills(torch.arange(5).view(5, 1, 1, 1).to(torch.uint8), ["a", "b", "a", "c", "b"])
    d = stills.distinct()
    assert d.captions == ["a", "b", "c"] and d.pixels.view(-1).tolist() == [0, 1, 3]


def test_random_shift_translates_without_flipping() -> None:
    img = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    img[0, :, 5, 3] = 255  # one bright pixel left of centre
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(random_shift(img, 0, gen), img)
    for _ in range(20):
        out = random_shift(img, 2, gen)
        assert out.dtype == torch.uint8 and out.shape == img.shape
        ys, xs = torch.nonzero(out[0, 0], as_tuple=True)
        assert len(ys) == 1 and abs(int(ys[0]) - 5) <= 2 and abs(int(xs[0]) - 3) <= 2


def test_short_training_learns_colours_and_sides(tmp_path: Path) -> None:
    _write_stills(tmp_path / "train.parquet", 96, seed=1)
    _write_stills(tmp_path / "val.parquet", 16, seed=2)
    train, val = load_stills(tmp_path / "train.parquet", 32), load_stills(tmp_path / "val.parquet", 32)
    cfg = PretrainConfig(seed=0, epochs=16, batch_size=16, lr=2e-3, warmup=0.1)
    model, metrics = train_tiny_clip("tiny-clip", train, val, cfg, context_length=16, progress=False)
    assert metrics["steps"] == 16 * (96 // 16) and metrics["val_distinct"] == 8
    assert metrics["val"]["t2i"]["queries"] == 8
    assert metrics["val"]["t2i"]["R@1"] >= 50.0 and metrics["val"]["i2t"]["R@1"] >= 50.0  # chance: 12.5
    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]
    assert not any(p.requires_grad for p in model.parameters())

    out = tmp_path / "tiny-clip"
    save_clip(model, "tiny-clip", out, {"context_length": 16, "training": asdict(cfg)})
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"]["vision_cfg"]["image_size"] == 32 and config["training"]["lr"] == 2e-3
    loaded = load_backbone("tiny-clip", str(out / "open_clip_model.safetensors"), context_length=16)
    assert loaded.logit_scale == pytest.approx(metrics["logit_scale"], rel=1e-6)
    with torch.no_grad():
        ref = F.normalize(model.encode_image(loaded.preprocess_uint8(val.pixels)), dim=-1)
    assert torch.allclose(loaded.encode_images(val.pixels), ref, atol=1e-6)
    via_open_clip = open_clip.create_model(f"local-dir:{out}")  # open_clip's own layout reads it too
    assert torch.equal(via_open_clip.logit_scale, loaded.model.logit_scale)


def test_stage_writes_model_and_metrics(tmp_path: Path) -> None:
    _write_stills(tmp_path / "data/shapes/stills/train.parquet", 32, seed=3)
    _write_stills(tmp_path / "data/shapes/stills/val.parquet", 8, seed=4)
    params = {"pretrain_clip": {"epochs": 1, "batch_size": 16}, "model": {"context_length": 16}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    res = subprocess.run(
        stage_command("pretrain_clip"), cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert res.returncode == 0, res.stderr
    config = json.loads((tmp_path / "models/tiny-clip/open_clip_config.json").read_text())
    assert "seconds" not in json.dumps(config)  # nothing run-dependent: same weights, same directory
    assert (tmp_path / "models/tiny-clip/open_clip_model.safetensors").is_file()
    metrics = json.loads((tmp_path / "metrics/pretrain_clip.json").read_text())
    assert metrics["steps"] == 2 and set(metrics["val"]) == {"t2i", "i2t"}
    assert {"R@1", "R@5", "MdR", "MnR", "queries"} <= set(metrics["val"]["t2i"])
    assert "final_loss" in metrics and "seconds" not in metrics  # timings are run information, not metrics
    info = json.loads((tmp_path / "metrics/info/pretrain_clip.json").read_text())
    assert info["seconds"] > 0 and info["device"] == "cpu"
