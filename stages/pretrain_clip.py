"""Stage ``pretrain_clip``: train the tiny CLIP (``discovla/configs/tiny-clip.json``) on the shapes stills.

Reads params ``pretrain_clip`` (seed, epochs, batch_size, lr, weight_decay, warmup) and
``model.context_length``, and ``data/shapes/stills/{train,val}.parquet``. Writes ``models/tiny-clip/``
(``open_clip_model.safetensors`` + ``open_clip_config.json``) and ``metrics/pretrain_clip.json``
(t2i / i2t R@K on held-out stills with distinct captions, seconds, steps, final loss).

The tiny CLIP always uses the ``tiny-clip`` config, whatever ``model.backbone`` says: it is the embedded
world's stand-in for OpenAI CLIP, and a real backbone (ViT-B-16) is never pretrained here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from discovla.backbone import model_config
from discovla.config import Params, ParamsError, load_params_or_exit
from discovla.errors import run_stage
from discovla.io import write_json
from discovla.pretrain import PretrainConfig, load_stills, save_tiny_clip, train_tiny_clip

CONFIG_NAME = "tiny-clip"
STILLS = Path("data/shapes/stills")
OUT_DIR = Path("models/tiny-clip")
METRICS = Path("metrics/pretrain_clip.json")


def run(params: Params) -> dict:
    """Train, save ``models/tiny-clip`` and ``metrics/pretrain_clip.json``; returns the metrics."""
    p = params.pretrain_clip
    cfg = PretrainConfig(
        seed=p.seed,
        epochs=p.epochs,
        batch_size=p.batch_size,
        lr=p.lr,
        weight_decay=p.weight_decay,
        warmup=p.warmup,
    )
    context_length = params.model.context_length
    limit = model_config(CONFIG_NAME)["text_cfg"]["context_length"]
    if context_length > limit:
        raise ParamsError(f"model.context_length: the tiny CLIP has {limit} positions, got {context_length}")
    size = model_config(CONFIG_NAME)["vision_cfg"]["image_size"]
    train = load_stills(STILLS / "train.parquet", size)
    val = load_stills(STILLS / "val.parquet", size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, metrics = train_tiny_clip(CONFIG_NAME, train, val, cfg, context_length, device=device)
    save_tiny_clip(model, CONFIG_NAME, OUT_DIR, cfg, context_length, metrics)
    write_json(METRICS, {k: v for k, v in metrics.items() if k != "history"})
    return metrics


def main() -> None:
    metrics = run(load_params_or_exit())
    v = metrics["val"]
    print(
        f"tiny CLIP: held-out stills ({metrics['val_distinct']} distinct captions) "
        f"t2i R@1 {v['t2i']['R@1']:.1f}, i2t R@1 {v['i2t']['R@1']:.1f}; "
        f"{metrics['steps']} steps in {metrics['seconds']:.0f} s"
    )


if __name__ == "__main__":
    run_stage(main)
