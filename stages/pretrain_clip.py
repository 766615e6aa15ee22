"""Stage ``pretrain_clip``: train the tiny CLIP (``discovla/configs/tiny-clip.json``) on the shapes stills.

Reads params ``pretrain_clip`` and ``model.context_length`` and the stills corpus (``train.parquet``,
``val.parquet``). Writes the model in open_clip's local layout (``open_clip_model.safetensors`` +
``open_clip_config.json``) and metrics (t2i / i2t R@K on held-out stills with distinct captions, seconds,
steps, final loss).

The tiny CLIP always uses the ``tiny-clip`` config, whatever ``model.backbone`` says: it is the embedded
world's stand-in for OpenAI CLIP, and a real backbone (ViT-B-16) is never pretrained here.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer

from discovla.artifacts.metrics import write_metrics
from discovla.clip_factory import model_config, save_clip
from discovla.config import ParamsError, load_params_or_exit
from discovla.errors import run_stage
from discovla.pretrain import PretrainConfig, load_stills, train_tiny_clip
from discovla.runtime import resolve_device

CONFIG_NAME = "tiny-clip"


def main(
    stills: Path = typer.Option(..., help="Stills corpus directory (shapes stage)."),
    out: Path = typer.Option(..., help="Directory for the trained model."),
    metrics: Path = typer.Option(..., help="Pretraining metrics JSON."),
    info: Path = typer.Option(..., help="Run information JSON: timings, speeds, device (not a DVC metric)."),
) -> None:
    params = load_params_or_exit()
    p = params.pretrain_clip
    cfg = PretrainConfig(**p.model_dump())
    context_length = params.model.context_length
    limit = model_config(CONFIG_NAME)["text_cfg"]["context_length"]
    if context_length > limit:
        raise ParamsError(f"model.context_length: the tiny CLIP has {limit} positions, got {context_length}")
    size = model_config(CONFIG_NAME)["vision_cfg"]["image_size"]
    train = load_stills(stills / "train.parquet", size)
    val = load_stills(stills / "val.parquet", size)
    device = resolve_device("auto")
    model, result = train_tiny_clip(CONFIG_NAME, train, val, cfg, context_length, device=device)
    save_clip(model, CONFIG_NAME, out, {"context_length": context_length, "training": asdict(cfg)})
    write_metrics(metrics, info, {k: v for k, v in result.items() if k != "history"})
    v = result["val"]
    print(
        f"tiny CLIP: held-out stills ({result['val_distinct']} distinct captions) "
        f"t2i R@1 {v['t2i']['R@1']:.1f}, i2t R@1 {v['i2t']['R@1']:.1f}; "
        f"{result['steps']} steps in {result['seconds']:.0f} s -> {out}"
    )


if __name__ == "__main__":
    run_stage(main)
