"""Search test fixtures: trained tiny adapters, real mp4 clips, a feature cache on disk."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from discovla.io import write_json

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
    from discovla.artifacts.adapters import save_adapters
    from discovla.backbone import load_backbone
    from discovla.clip_factory import HF_SAFE_WEIGHTS, save_clip
    from discovla.model import DiscoVLAConfig
    from discovla.train import TrainConfig, train

    torch.manual_seed(0)
    save_clip(load_backbone("tiny-clip", None, context_length=CTX).model, "tiny-clip", root / "clip", {})
    ckpt = root / "clip" / HF_SAFE_WEIGHTS
    clip = load_backbone("tiny-clip", str(ckpt), context_length=CTX).model
    cfg = TrainConfig(
        seed=3,
        epochs=1,
        batch_size=8,
        lr=1e-3,
        warmup=0.25,
        device="cpu",
        model=DiscoVLAConfig(
            lora_rank=4, fusion=True, vision_layers=2, text_layers=1, adapter_dim=4, num_frames=FRAMES
        ),
    )
    model, _ = train(clip, features, replace(cfg), root / "checkpoints", progress=False)
    out = root / "models" / "discovla"
    save_adapters(out, model, {"backbone": "tiny-clip", "pretrained": str(ckpt), "context_length": CTX})
    return out


def _fixed(arr: np.ndarray) -> pa.FixedSizeListArray:
    arr = np.ascontiguousarray(arr)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])


def write_features(features: Any, out: Path) -> Path:
    """``features`` (in memory, e.g. ``synthetic_features()``) in the features stage's on-disk layout."""
    out.mkdir(parents=True, exist_ok=True)
    n, f = features.pixels.shape[:2]
    vid = np.repeat(np.array(features.video_ids), f)
    frame = np.tile(np.arange(f, dtype=np.int32), n)
    pq.write_table(
        pa.table(
            {
                "video_id": pa.array(vid, pa.string()),
                "frame": pa.array(frame, pa.int32()),
                "pixels": _fixed(features.pixels.reshape(n * f, -1).numpy()),
                "embedding": _fixed(features.frame_emb.reshape(n * f, -1).numpy()),
            }
        ),
        out / "frames.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "video_id": pa.array(vid, pa.string()),
                "frame": pa.array(frame, pa.int32()),
                "caption": pa.array(["a frame"] * (n * f), pa.string()),
                "tokens": _fixed(features.pseudo_tokens.reshape(n * f, -1).numpy().astype(np.int32)),
                "embedding": _fixed(features.pseudo_emb.reshape(n * f, -1).numpy()),
            }
        ),
        out / "pseudo.parquet",
    )
    caps = features.captions
    pq.write_table(
        pa.table(
            {
                "caption_id": pa.array(caps.caption_id, pa.int64()),
                "video_id": pa.array(caps.video_id, pa.string()),
                "split": pa.array(caps.split, pa.string()),
                "caption": pa.array(caps.caption, pa.string()),
                "tokens": _fixed(features.cap_tokens.numpy().astype(np.int32)),
                "embedding": _fixed(features.cap_emb.numpy()),
            }
        ),
        out / "captions.parquet",
    )
    rows = zip(features.video_ids, features.video_split, strict=True)
    (out / "videos.csv").write_text("video_id,split\n" + "".join(f"{v},{s}\n" for v, s in rows))
    write_json(out / "meta.json", {**features.meta, "num_frames": int(f), "backbone": "tiny-clip"})
    return out
