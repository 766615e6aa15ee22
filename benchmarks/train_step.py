"""Benchmark: seconds per DiscoVLA training step (forward + backward + AdamW) on the current device.

    python benchmarks/train_step.py --backbone tiny-clip --batch 32 --frames 8

Uses a randomly initialised backbone (no weights needed) and random inputs; reports the median of
``--steps`` timed steps after ``--warmup`` untimed ones, for LoRA only and for full DiscoVLA, and what the
reference recipe's options add to a step: ``train.augment: randaugment`` (timm's policy on the batch's
uint8 frames, one draw per video) and ``train.sampling`` (building an epoch's sample order; ``pairs`` does
not change the cost of a step, it makes an epoch ``captions per video`` times longer).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch
import typer

from discovla.augment import augment_batch
from discovla.backbone import load_backbone
from discovla.losses import discovla_loss
from discovla.model import DiscoVLA, DiscoVLAConfig


def bench(
    backbone: str, batch: int, frames: int, steps: int, warmup: int, fusion: bool, device: str
) -> float:
    torch.manual_seed(0)
    bb = load_backbone(backbone, None, device=device, context_length=32)
    cfg = DiscoVLAConfig(fusion=fusion, num_frames=frames)
    model = DiscoVLA(bb.model, cfg).to(device).train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    s = bb.image_size
    pixels = torch.randn(batch, frames, 3, s, s, device=device)
    tokens = torch.randint(300, 2000, (batch, 32), device=device)
    tokens[:, 0], tokens[:, 20] = 49406, 49407
    tokens[:, 21:] = 0
    pseudo = tokens[:, None].expand(batch, frames, 32).contiguous()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            f = model.encode_frames(pixels)
            t = model.encode_text(tokens)
            p = model.encode_pseudo(pseudo) if fusion else None
        terms = discovla_loss(
            t.float(),
            f.float(),
            p.float() if p is not None else None,
            model.logit_scale,
            alpha=0.3 if fusion else 0.0,
            beta=1.0 if fusion else 0.0,
        )
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_augment(batch: int, frames: int, size: int, steps: int) -> float:
    """Median seconds to RandAugment one batch of uint8 frames (what ``train.augment`` adds per step)."""
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (batch, frames, 3, size, size), dtype=torch.uint8, generator=gen)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        augment_batch(pixels, "randaugment", 0, i, range(i * batch, (i + 1) * batch))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_epoch_plan(videos: int, captions: int, sampling: str) -> float:
    """Seconds to build one epoch's (video, caption) order for ``videos`` x ``captions`` pairs."""
    import numpy as np
    import pandas as pd

    from discovla.artifacts.features import Features
    from discovla.train import epoch_plan

    vi = np.repeat(np.arange(videos), captions)
    caps = pd.DataFrame({"video_index": vi, "split": "train"})
    feats = Features(
        {}, [], np.array([]), *(torch.empty(0),) * 4, caps, *(torch.empty(0),) * 2, pd.DataFrame()
    )
    t0 = time.perf_counter()
    epoch_plan(feats, np.arange(videos), 0, 0, sampling)
    return time.perf_counter() - t0


def main(
    backbone: str = "tiny-clip",
    batch: int = 32,
    frames: int = 8,
    steps: int = 10,
    warmup: int = 2,
    out: str = "benchmarks/results/train_step.json",
) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {
        "backbone": backbone,
        "batch": batch,
        "frames": frames,
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()}",
        "machine": platform.machine(),
        "torch": torch.__version__,
        "lora_only_s_per_step": bench(backbone, batch, frames, steps, warmup, False, device),
        "discovla_s_per_step": bench(backbone, batch, frames, steps, warmup, True, device),
    }
    size = load_backbone(backbone, None, context_length=32).image_size
    result["randaugment_s_per_step"] = bench_augment(batch, frames, size, steps)
    # shapes world: 2,000 train videos x 4 captions; MSRVTT 9k: 9,000 x 20
    for name, (v, c) in {"shapes": (2000, 4), "msrvtt9k": (9000, 20)}.items():
        for sampling in ("pairs", "videos"):
            result[f"epoch_plan_s_{sampling}_{name}"] = bench_epoch_plan(v, c, sampling)
            result[f"steps_per_epoch_{sampling}_{name}"] = (v * c if sampling == "pairs" else v) // batch
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
