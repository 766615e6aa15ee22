"""Benchmark: seconds per DiscoVLA training step (forward + backward + AdamW) on the current device.

    python benchmarks/train_step.py --backbone tiny-clip --batch 32 --frames 8
    python benchmarks/train_step.py --backbone ViT-B-16 --batch 128 --frames 12 --activation-checkpointing

Uses a randomly initialised backbone (no weights needed) and random inputs; reports the median of
``--steps`` timed steps after ``--warmup`` untimed ones, for LoRA only, for full DiscoVLA and for the
order-aware extension (temporal module + L_order with reversed and shuffled copies) (with
``--activation-checkpointing``: also with every residual block checkpointed), and what the reference
recipe's options add to a step: ``train.augment: randaugment`` (timm's policy on the batch's uint8 frames,
one draw per video) and ``train.sampling`` (building an epoch's sample order; ``pairs`` does not change the
cost of a step, it makes an epoch ``captions per video`` times longer).

Each measured configuration (``runs`` in the results) also reports the step's analytic model and hardware
FLOPs (:mod:`discovla.flops`), the achieved model TFLOP/s, MFU against the card's dense BF16 peak when the
card is known, and peak GPU memory (``torch.cuda.max_memory_allocated``, reset per configuration). On CUDA
the optimiser is fused AdamW and the precision bf16 autocast (as ``train.precision: auto``); ``--compile``
runs the step's forward and loss through ``torch.compile`` (its backward is compiled with it).

Other scripts call :func:`measure_step` (importing this file has no side effects).
"""

from __future__ import annotations

import gc
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import typer

from discovla.augment import augment_batch
from discovla.backbone import load_backbone
from discovla.distributed import Dist
from discovla.flops import mfu, peak_bf16_flops, step_flops, text_length
from discovla.losses import discovla_loss
from discovla.model import DiscoVLA, DiscoVLAConfig
from discovla.order import order_copies, order_perms

CONTEXT = 32  # caption tokens per row of the feature cache (the reference code's context length)
EOT_AT = 20  # benchmark captions: SOT, 19 words, EOT, padding (21 tokens run after trimming)
PRECISIONS = ("auto", "bf16", "fp32")


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` for a GPU, ``cpu xN (machine)`` (N threads) otherwise. The one device
    label of the benchmarks (gpu.py and captioner.py use it too)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} x{torch.get_num_threads()} ({platform.machine()})"


def measure_step(
    backbone: str = "tiny-clip",
    batch: int = 32,
    frames: int = 8,
    device: str | torch.device | None = None,
    activation_checkpointing: bool = False,
    compile: bool = False,
    steps: int = 10,
    warmup: int = 2,
    precision: str = "auto",
    fusion: bool = True,
    order: bool = False,
    trends: int = 0,
) -> dict[str, Any]:
    """Time ``steps`` DiscoVLA training steps (after ``warmup``) on a random ``backbone`` and random inputs.

    Args:
        backbone: open_clip model name or a ``discovla/configs`` name (random init, no download).
        batch, frames: videos per step and frames per video (at the backbone's image size).
        device: ``cuda``, ``cpu``, ...; None = CUDA if available.
        activation_checkpointing: checkpoint every residual block
            (:meth:`DiscoVLA.set_activation_checkpointing`).
        compile: ``torch.compile`` the forward + loss (graph breaks at the text trimming are expected).
        precision: ``auto`` (bf16 autocast on CUDA, fp32 elsewhere), ``bf16`` or ``fp32``.
        fusion: full DiscoVLA (IVFusion + pseudo captions, alpha 0.3, beta 1) or LoRA only (video loss).
        order: the order-aware extension on top (``temporal.module`` with the params' width and layers, and
            L_order with the reversed and a shuffled copy of every video, ``temporal.shuffled``).
        trends: time-trend pooling (``temporal.trends``) and L_order (with the reversed copy only, unless
            ``order`` adds the shuffled one).
    Returns:
        ``s_per_step`` (median), ``first_step_s`` (includes compilation), ``peak_mem_gib`` (CUDA, else None),
        ``model_flops`` / ``hardware_flops`` per step (:func:`discovla.flops.step_flops`; hardware FLOPs
        as eager mode recomputes: with ``compile`` the partitioner may recompute differently),
        ``model_tflops_per_s``, ``peak_flops`` (dense BF16, None if unknown), ``mfu`` / ``hfu`` (None if
        the peak is unknown or the precision is not bf16), ``oom`` (True: the configuration ran out of GPU
        memory; the timings are then None), and the configuration.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    result: dict[str, Any] = {
        "backbone": backbone,
        "batch": batch,
        "frames": frames,
        "device": device_name(dev),
        "precision": "bf16" if bf16 else "fp32",
        "fusion": fusion,
        "order": order,
        "trends": trends,
        "activation_checkpointing": activation_checkpointing,
        "compile": compile,
        "steps": steps,
        "warmup": warmup,
    }
    try:
        result.update(
            _measure(
                backbone,
                batch,
                frames,
                dev,
                activation_checkpointing,
                compile,
                steps,
                warmup,
                bf16,
                fusion,
                order,
                trends,
            )
        )
        result["oom"] = False
    except torch.OutOfMemoryError as err:  # the exception (and its frames' tensors) are gone after this block
        result.update(oom=True, error=str(err).splitlines()[0], s_per_step=None, first_step_s=None)
        result.update(peak_mem_gib=None, model_flops=None, hardware_flops=None)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    s = result["s_per_step"]
    peak = peak_bf16_flops(result["device"]) if dev.type == "cuda" else None
    use_peak = bool(peak and bf16 and s)
    result["peak_flops"] = peak
    result["model_tflops_per_s"] = result["model_flops"] / s / 1e12 if s else None
    result["mfu"] = mfu(result["model_flops"], s, peak) if use_peak else None
    result["hfu"] = mfu(result["hardware_flops"], s, peak) if use_peak else None
    return result


def _measure(
    backbone: str,
    batch: int,
    frames: int,
    device: torch.device,
    checkpointing: bool,
    compile: bool,
    steps: int,
    warmup: int,
    bf16: bool,
    fusion: bool,
    order: bool = False,
    trends: int = 0,
) -> dict[str, Any]:
    torch.manual_seed(0)
    bb = load_backbone(backbone, None, device=device, context_length=CONTEXT)
    cfg = DiscoVLAConfig(fusion=fusion, num_frames=frames, temporal_module=order, temporal_trends=trends)
    l_order = order or trends > 0
    model = DiscoVLA(bb.model, cfg).to(device).train()
    model.set_activation_checkpointing(checkpointing)
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4, fused=cuda)
    s = bb.image_size
    pixels = torch.randn(batch, frames, 3, s, s, device=device)
    tokens = torch.randint(300, 2000, (batch, CONTEXT), device=device)
    tokens[:, 0], tokens[:, EOT_AT] = 49406, 49407
    tokens[:, EOT_AT + 1 :] = 0
    pseudo = tokens[:, None].expand(batch, frames, CONTEXT).contiguous()
    scale = model.logit_scale
    perms = order_perms(0, order, 0, frames) if l_order else []
    alpha, beta = (0.3, 1.0) if fusion else (0.0, 0.0)

    def forward_loss(pixels: torch.Tensor, tokens: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            f = model.encode_frames(pixels)
            t = model.encode_text(tokens)
            p = model.encode_pseudo(pseudo) if fusion else None
        f = f.float()
        copies = order_copies(model, pixels, f, perms, Dist(), bf16) if l_order else None
        terms = discovla_loss(
            t.float(),
            f,
            p.float() if p is not None else None,
            scale,
            alpha=alpha,
            beta=beta,
            video=model.video_embedding(f),
            order_copies=copies,
            order_weight=1.0 if l_order else 0.0,
        )
        return terms["loss"]

    if compile:
        torch._dynamo.reset()  # a fresh cache per configuration: no recompile limit across calls
    step_fn = torch.compile(forward_loss) if compile else forward_loss
    flops = step_flops(
        model,
        batch,
        frames,
        text_length(model, tokens),
        text_length(model, pseudo) if fusion else None,
        checkpointing,
    )
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        loss = step_fn(pixels, tokens, pseudo)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    timed = times[warmup:] or times
    return {
        "s_per_step": statistics.median(timed),
        "first_step_s": times[0],
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "text_len": flops["text_len"],
        "pseudo_len": flops["pseudo_len"],
        "model_flops": flops["model_flops"],
        "hardware_flops": flops["hardware_flops"],
        "image_size": s,
    }


def bench(
    backbone: str, batch: int, frames: int, steps: int, warmup: int, fusion: bool, device: str
) -> float:
    """Median seconds per step (the earlier interface of this script)."""
    return measure_step(backbone, batch, frames, device, steps=steps, warmup=warmup, fusion=fusion)[
        "s_per_step"
    ]


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
    from types import SimpleNamespace

    import numpy as np
    import pandas as pd

    from discovla.train import epoch_plan

    vi = np.repeat(np.arange(videos), captions)
    feats = SimpleNamespace(captions=pd.DataFrame({"video_index": vi, "split": "train"}))  # all it reads
    t0 = time.perf_counter()
    epoch_plan(feats, np.arange(videos), 0, 0, sampling)
    return time.perf_counter() - t0


def main(
    backbone: str = "tiny-clip",
    batch: int = 32,
    frames: int = 8,
    steps: int = 10,
    warmup: int = 2,
    activation_checkpointing: bool = typer.Option(
        False, help="Also measure with every residual block checkpointed."
    ),
    compile: bool = typer.Option(False, help="torch.compile the forward + loss."),
    precision: str = typer.Option("auto", help="auto (bf16 on CUDA), bf16 or fp32."),
    out: str = "benchmarks/results/train_step.json",
) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result: dict[str, Any] = {
        "backbone": backbone,
        "batch": batch,
        "frames": frames,
        "device": device_name(torch.device(device)),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "compile": compile,
    }
    runs: dict[str, dict[str, Any]] = {}
    for ckpt in (False, True) if activation_checkpointing else (False,):
        for name, fusion, order in (
            ("lora_only", False, False),
            ("discovla", True, False),
            ("order_aware", True, True),
        ):
            key = f"{name}_checkpointing" if ckpt else name
            runs[key] = measure_step(
                backbone, batch, frames, device, ckpt, compile, steps, warmup, precision, fusion, order
            )
            result[f"{key}_s_per_step"] = runs[key]["s_per_step"]
            print(f"{key}: {json.dumps(runs[key])}", flush=True)
    size = (
        runs["discovla"].get("image_size") or load_backbone(backbone, None, context_length=CONTEXT).image_size
    )
    result["randaugment_s_per_step"] = bench_augment(batch, frames, size, steps)
    # shapes world: 2,000 train videos x 4 captions; MSRVTT 9k: 9,000 x 20
    for name, (v, c) in {"shapes": (2000, 4), "msrvtt9k": (9000, 20)}.items():
        for sampling in ("pairs", "videos"):
            result[f"epoch_plan_s_{sampling}_{name}"] = bench_epoch_plan(v, c, sampling)
            result[f"steps_per_epoch_{sampling}_{name}"] = (v * c if sampling == "pairs" else v) // batch
    result["runs"] = runs
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
