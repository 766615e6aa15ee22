"""Benchmark: captions per second of BLIP-base through the captions stage's own code path.

\b
    python benchmarks/captioner.py --device cuda --batch 128 --frames 1024 --dtype bf16
    python benchmarks/captioner.py --device cpu --batch 8 --frames 24 --dtype fp32 --dtype bf16

The model is BLIP-base's architecture (transformers ``BlipConfig()``: ViT-B/16 at 384 px and a BERT-base
text decoder, 224M parameters) with random weights, built offline (:func:`random_blip` below);
``--weights auto`` takes the real ``Salesforce/blip-image-captioning-base`` instead when it is on this
machine (``models/blip-base`` or the Hugging Face cache; nothing is downloaded). Frames are random uint8
``--frame-size`` x ``--frame-size`` RGB arrays, captioned one batch per call of ``Captioner.caption``, as
the captions stage does: preprocessing (resize to 384, normalise), ``generate``, decoding, normalising.

Greedy decoding with a fixed length: ``min_new_tokens = max_new_tokens`` (20 by default, about a real
BLIP caption's length with its end token). Random weights rarely emit the end token, real ones stop
early at various lengths; forcing the length makes every caption cost the same decoder steps, whatever
the weights. One untimed warm-up batch first. Results (captions/s, s/batch, the projected minutes for
MSRVTT's 120,000 frames against the 10-minute goal) go to ``--out``, one run per (device, dtype, batch,
weights, tokens), replacing an earlier run with the same key.

Another script calls :func:`measure` (building the model) or :func:`measure_captioner` (a model built
once, several batch sizes); importing this module runs nothing.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import typer
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts
from train_step import device_name  # noqa: E402

from discovla.captioner import BLIP_BASE, Captioner, CaptionerUnavailable, load_captioner
from discovla.runtime import resolve_device
from discovla.text import CaptionsError
from discovla.tiny_blip import build_processor

MSRVTT_FRAMES = 120_000  # 10,000 videos x 12 frames
GOAL_MINUTES = 10.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOCAL_BLIP_BASE = Path("models/blip-base")  # where the captioner's offline message says to put it
RESULTS = Path(__file__).parent / "results" / "captioner.json"


def blip_vocab(text_config: Any) -> list[str]:
    """A placeholder BERT vocabulary of ``text_config.vocab_size`` entries with BLIP's special tokens where
    the config expects them: ``[PAD]``, ``[SEP]`` (end) and ``[DEC]`` (bos) at its ids; ``[UNK] [CLS]
    [MASK]`` at BERT's 100, 101, 103 and ``[ENC]`` after ``[DEC]`` when free; words ``w<id>`` elsewhere."""
    size = int(text_config.vocab_size)
    fixed = {
        int(text_config.pad_token_id): "[PAD]",
        int(text_config.sep_token_id): "[SEP]",
        int(text_config.bos_token_id): "[DEC]",
    }
    if len(fixed) < 3 or max(fixed) >= size:
        raise CaptionsError(f"text_config: pad, sep and bos ids {sorted(fixed)} must differ and be < {size}")
    vocab: list[str | None] = [None] * size
    for i, tok in fixed.items():
        vocab[i] = tok
    wanted = {"[UNK]": 100, "[CLS]": 101, "[MASK]": 103, "[ENC]": int(text_config.bos_token_id) + 1}
    for tok, i in wanted.items():
        free = [j for j, v in enumerate(vocab) if v is None]
        if not free:
            raise CaptionsError(f"text_config.vocab_size={size} is too small for BLIP's special tokens")
        vocab[i if i < size and vocab[i] is None else free[0]] = tok
    return [v if v is not None else f"w{i}" for i, v in enumerate(vocab)]


def random_blip(
    config: Any | None = None,
    device: str | torch.device = "auto",
    dtype: torch.dtype | None = None,
    seed: int = 0,
) -> Captioner:
    """A BLIP captioner with random weights: BLIP-base's architecture (``BlipConfig()``: ViT-B/16 at 384 px,
    BERT-base text decoder) unless ``config`` (a ``BlipConfig``) is given; no download.

    The processor is BLIP's (:func:`discovla.tiny_blip.build_processor`: 384 px BICUBIC, CLIP mean/std at
    the config's image size) with a BERT tokenizer over :func:`blip_vocab`. Seeded without touching the
    global RNG. Captions are placeholder words: for measuring speed, not quality.
    """
    from transformers import BlipConfig, BlipForConditionalGeneration

    config = config if config is not None else BlipConfig()
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(blip_vocab(config.text_config)) + "\n")
        processor = build_processor(vocab_file, int(config.vision_config.image_size))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = BlipForConditionalGeneration(config)
    name = "random BLIP-base" if config.to_dict() == BlipConfig().to_dict() else "random BLIP"
    return Captioner(net, processor, device, name=name, dtype=dtype)


def _torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def build_captioner(
    weights: str = "random",
    device: str | torch.device = "auto",
    dtype: str = "bf16",
    config: Any | None = None,
) -> Captioner:
    """The captioner to measure. ``weights``: ``random`` (BLIP-base's architecture, or ``config``: a
    ``BlipConfig``), ``auto`` (the real BLIP-base when on this machine, else random; never downloads), or a
    hub id / local directory for :func:`load_captioner`."""
    torch_dtype = _torch_dtype(dtype)
    if weights == "auto" and config is None:
        for source in (str(LOCAL_BLIP_BASE), BLIP_BASE):
            if source == str(LOCAL_BLIP_BASE) and not LOCAL_BLIP_BASE.is_dir():
                continue
            try:
                with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):  # cache only: no network
                    return load_captioner(source, device, torch_dtype)
            except CaptionerUnavailable:
                continue
        weights = "random"
    if weights in ("random", "auto"):
        return random_blip(config, device, torch_dtype)
    return load_captioner(weights, device, torch_dtype)


def _config_summary(captioner: Captioner) -> dict[str, int]:
    cfg = captioner.model.config
    v, t = cfg.vision_config, cfg.text_config
    return {
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "vision_hidden": v.hidden_size,
        "vision_layers": v.num_hidden_layers,
        "text_hidden": t.hidden_size,
        "text_layers": t.num_hidden_layers,
        "vocab_size": t.vocab_size,
    }


def measure_captioner(
    captioner: Captioner,
    frames: int,
    batch: int,
    max_new_tokens: int = 20,
    frame_size: int = 224,
    seed: int = 0,
) -> dict[str, Any]:
    """Caption ``frames`` random frames in batches of ``batch`` with ``captioner`` (fixed caption length,
    after one untimed warm-up batch) and return the throughput and what was produced."""
    if frames < 1 or batch < 1 or max_new_tokens < 1 or frame_size < 1:
        raise ValueError("frames, batch, max_new_tokens and frame_size must be >= 1")
    if max_new_tokens > captioner.max_new_tokens_limit:
        raise ValueError(f"max_new_tokens must be <= {captioner.max_new_tokens_limit} (position embeddings)")
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, (min(batch, frames), frame_size, frame_size, 3), dtype=np.uint8)
    dev = captioner.device
    kwargs = {"max_new_tokens": max_new_tokens, "min_new_tokens": max_new_tokens, "progress": False}

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    captioner.caption(pool, batch, **kwargs)  # warm-up: kernels, allocator, autotuning
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    pil = [Image.fromarray(x) for x in pool]  # what Captioner.caption does, then BLIP's processor
    captioner.processor(images=pil, return_tensors="pt")  # preprocessing alone (CPU), one batch
    preprocess_s = time.perf_counter() - t0

    load_before = os.getloadavg()[0]  # other processes on the CPUs slow every part of a step
    tokens0, unfinished0 = captioner.generated_tokens, captioner.unfinished
    captions: list[str] = []
    times: list[float] = []
    start = time.perf_counter()
    for first in range(0, frames, batch):
        n = min(batch, frames - first)
        t0 = time.perf_counter()
        captions.extend(captioner.caption(pool[:n], batch, **kwargs))  # decoding syncs the device
        sync()
        times.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - start
    per_s = len(captions) / seconds
    result: dict[str, Any] = {
        "frames": frames,
        "batch": batch,
        "batches": len(times),
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": max_new_tokens,
        "frame_size": frame_size,
        "captions": len(captions),
        "new_tokens_per_caption": (captioner.generated_tokens - tokens0) / max(len(captions), 1),
        "unfinished_captions": captioner.unfinished - unfinished0,
        "empty_captions": sum(not c for c in captions),
        "seconds": round(seconds, 3),
        "captions_per_s": round(per_s, 2),
        "s_per_batch_median": round(statistics.median(times), 4),
        "s_per_batch_mean": round(seconds / len(times), 4),
        "preprocess_s_per_batch": round(preprocess_s, 4),
        "projected_minutes_msrvtt": round(MSRVTT_FRAMES / per_s / 60, 2),
        "goal_minutes": GOAL_MINUTES,
        "meets_goal": MSRVTT_FRAMES / per_s / 60 < GOAL_MINUTES,
        "examples": captions[:2],
        # before, after (this run counts too: up to its torch threads); well above them: CPUs shared
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
    }
    if dev.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    return result


def describe(captioner: Captioner) -> dict[str, Any]:
    """What is measured and where: weights, dtype, sizes, device, versions."""
    import transformers

    return {
        "weights": captioner.name,
        "dtype": {v: k for k, v in DTYPES.items()}.get(captioner.model.dtype, str(captioner.model.dtype)),
        "parameters": sum(p.numel() for p in captioner.model.parameters()),
        "config": _config_summary(captioner),
        "device": device_name(captioner.device),
        "device_type": captioner.device.type,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def measure(
    device: str = "auto",
    frames: int = 512,
    batch: int = 128,
    dtype: str = "bf16",
    max_new_tokens: int = 20,
    *,
    weights: str = "random",
    config: Any | None = None,
    frame_size: int = 224,
    seed: int = 0,
) -> dict[str, Any]:
    """Build the captioner (:func:`build_captioner`) and measure it (:func:`measure_captioner`): one dict
    with the run's description and its numbers (``captions_per_s``, ``s_per_batch_median``,
    ``projected_minutes_msrvtt``, ``meets_goal``, ...). ``config``: a small ``BlipConfig`` for tests."""
    captioner = build_captioner(weights, device, dtype, config)
    return {
        **describe(captioner),
        **measure_captioner(captioner, frames, batch, max_new_tokens, frame_size, seed),
    }


def _key(run: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(run.get(k) for k in ("device", "dtype", "batch", "weights", "max_new_tokens", "frame_size"))


def save_runs(runs: list[dict[str, Any]], out: str | Path = RESULTS) -> dict[str, Any]:
    """Merge ``runs`` into the results file (a run replaces an earlier one with the same key); return it."""
    out = Path(out)
    old = json.loads(out.read_text()).get("runs", []) if out.exists() else []
    new_keys = {_key(r) for r in runs}
    merged = [r for r in old if _key(r) not in new_keys] + runs
    doc = {
        "what": "BLIP-base captions/s through Captioner.caption (preprocess, greedy generate, decode), "
        "fixed caption length (min_new_tokens = max_new_tokens), warm-up batch excluded",
        "goal": f"MSRVTT's {MSRVTT_FRAMES:,} frames in under {GOAL_MINUTES:g} minutes "
        f"({MSRVTT_FRAMES / GOAL_MINUTES / 60:.0f} captions/s) on a GPU",
        "runs": merged,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(help=__doc__)
def main(
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu, cuda or cuda:N"),
    frames: int | None = typer.Option(None, help="frames to caption (timed); default: 4 batches"),
    batch: list[int] = typer.Option([128], help="batch size; repeat the option for several"),
    dtype: list[str] = typer.Option(["bf16"], help="bf16, fp32 or fp16 (the model's weights); repeatable"),
    max_new_tokens: int = typer.Option(20, help="tokens per caption, forced (min = max new tokens)"),
    weights: str = typer.Option(
        "random", help="random (BLIP-base, random weights), auto (real BLIP-base if local), or a path/hub id"
    ),
    frame_size: int = typer.Option(224, help="side of the random uint8 input frames (BLIP resizes to 384)"),
    out: Path = typer.Option(RESULTS, help="results JSON (runs merged by device, dtype, batch, weights)"),
) -> None:
    """Measure BLIP-base captions/s on one device for each --dtype and --batch; write --out."""
    dev = resolve_device(device)
    command = shlex.join(["python", *sys.argv])
    runs = []
    for dt in dtype:
        captioner = build_captioner(weights, dev, dt)
        for b in batch:
            n = frames if frames is not None else 4 * b
            run = {**describe(captioner), **measure_captioner(captioner, n, b, max_new_tokens, frame_size)}
            run["command"] = command
            print(
                f"{run['device']} {run['dtype']} batch {b}: {run['captions_per_s']} captions/s, "
                f"{run['s_per_batch_median']} s/batch, MSRVTT {run['projected_minutes_msrvtt']} min",
                flush=True,
            )
            runs.append(run)
        del captioner
    save_runs(runs, out)
    print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    app()
