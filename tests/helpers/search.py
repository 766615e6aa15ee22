"""Search test fixtures: trained tiny adapters, real mp4 clips, a feature cache on disk."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

CTX = 32
FRAMES = 4

# lavfi sources: every clip looks different (colour, pattern, motion)
SOURCES = {
    "red": "color=c=red:size=48x40:rate=10",
    "blue": "color=c=blue:size=48x40:rate=10",
    "bars": "smptebars=size=48x40:rate=10",
    "pattern": "testsrc=size=48x40:rate=10",
    "fractal": "mandelbrot=size=48x40:rate=10",
}


def make_clip(path: Path, source: str, seconds: float = 1.0) -> Path:
    """An H.264 mp4 of a lavfi ``source`` (see :data:`SOURCES`)."""
    from discovla.ffmpeg import ffmpeg_exe

    path.parent.mkdir(parents=True, exist_ok=True)
    args = ["-f", "lavfi", "-i", SOURCES.get(source, source), "-t", str(seconds), "-pix_fmt", "yuv420p"]
    cmd = [ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", *args, str(path)]
    subprocess.run(cmd, check=True)
    return path


def train_adapters(root: Path, features: Any) -> Path:
    """A tiny CLIP checkpoint (random init, saved so loading is exact) and DiscoVLA adapters trained for one
    epoch on ``features``, saved as the train stage does; returns the adapters directory."""
    from conftest import tiny_train_config

    from discovla.artifacts.adapters import save_adapters
    from discovla.backbone import load_backbone
    from discovla.clip_factory import HF_SAFE_WEIGHTS, save_clip
    from discovla.train import train

    torch.manual_seed(0)
    save_clip(load_backbone("tiny-clip", None, context_length=CTX).model, "tiny-clip", root / "clip", {})
    ckpt = root / "clip" / HF_SAFE_WEIGHTS
    clip = load_backbone("tiny-clip", str(ckpt), context_length=CTX).model
    cfg = replace(tiny_train_config(), epochs=1)
    assert cfg.model.num_frames == FRAMES
    model, _ = train(clip, features, replace(cfg), root / "checkpoints", progress=False)
    out = root / "models" / "discovla"
    save_adapters(out, model, {"backbone": "tiny-clip", "pretrained": str(ckpt), "context_length": CTX})
    return out


def write_features(features: Any, out: Path) -> Path:
    """``features`` (in memory, e.g. ``synthetic_features()``) in the features stage's on-disk layout."""
    from discovla.artifacts.features import save_features

    return save_features(replace(features, meta={**features.meta, "backbone": "tiny-clip"}), out)
