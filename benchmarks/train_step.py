"""Benchmark: seconds per DiscoVLA training step (forward + backward + AdamW) on the current device.

    python benchmarks/train_step.py --backbone tiny-clip --batch 32 --frames 8

Uses a randomly initialised backbone (no weights needed) and random inputs; reports the median of
``--steps`` timed steps after ``--warmup`` untimed ones, for LoRA only and for full DiscoVLA.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch
import typer

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
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
