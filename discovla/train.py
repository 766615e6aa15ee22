"""Training loop: LoRA + IVFusion adapters on a frozen CLIP with the DiscoVLA objective.

Runs as ``python stages/train.py`` on one device, or under ``torchrun --nproc_per_node N
stages/train.py``: RANK / WORLD_SIZE / LOCAL_RANK come from the environment, each rank takes a slice of
every global batch, and features are all-gathered *with* gradient so the contrastive losses see the
global batch (the reference code gathers without gradient).

Inputs come from the feature cache only (pixels, token ids of captions and pseudo captions): no video
or image is decoded here. Randomness (batch order, which caption of a video) is derived from
``seed + epoch``, so a run resumed from its last checkpoint ends with exactly the adapters of an
uninterrupted run. Checkpoints (safetensors + JSON) are written after every epoch under the
checkpoint directory, keyed by :func:`run_key`: the full training config, the content of the training
inputs (the feature cache's bytes), the frozen backbone's weights and the source of every ``discovla``
module that training and its monitoring import. Any changed byte of those starts a fresh run.

An epoch is, as in the reference code, every (video, caption) pair of the train split once
(``sampling="pairs"``), or one random caption per video (``sampling="videos"``). Training frames may be
augmented on the fly (``augment="randaugment"``, :mod:`discovla.augment`), one draw per sample that is a
pure function of (seed, epoch, sample position).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from discovla.augment import AUGMENTS, augment_batch
from discovla.features import Features
from discovla.io import atomic_dir, atomic_path, write_json
from discovla.losses import discovla_loss
from discovla.model import DiscoVLA, DiscoVLAConfig
from discovla.provenance import source_digest, tensors_digest

SAMPLINGS = ("pairs", "videos")
CHECKPOINTS_ENV = "DISCOVLA_CHECKPOINTS"
# what a checkpoint's content depends on: the loop, the model and losses it imports, the backbone builder
# (activation choice, weight loading) and the monitoring code whose numbers the checkpoint records
TRAINING_CODE = ("discovla.train", "discovla.backbone", "discovla.evaluate")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 42
    epochs: int = 5
    batch_size: int = 32  # global batch (videos)
    lr: float = 6e-4
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    warmup: float = 0.1
    grad_clip: float = 1.0
    sampling: str = "pairs"  # pairs: every (video, caption) pair once per epoch | videos: one caption each
    augment: str = "none"  # none | randaugment (reference policy, same ops on all frames of a video)
    alpha: float = 0.3
    beta: float = 1.0
    detach_teacher: bool = False
    distill_scale: str = "reference"
    device: str = "auto"
    precision: str = "auto"
    model: DiscoVLAConfig = field(default_factory=DiscoVLAConfig)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (torchrun); init the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(rank, world, local)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient of the gathered tensor and keeps this rank's
    slice (a reduce-scatter), on a contiguous gradient. ``torch.distributed.nn.all_gather`` on gloo gave
    gradients that did not match one process here (tests/test_train.py::test_torchrun_two_ranks_...)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
        ctx.rank, ctx.n = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n], None, None


def gather_with_grad(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping the gradient path to every rank's slice
    (equal local batch sizes on every rank)."""
    if d.world == 1:
        return x
    return _GatherWithGrad.apply(x, d.rank, d.world)


def average_gradients(params: list[torch.nn.Parameter], d: Dist) -> None:
    """Average gradients over ranks (what DDP would do), so every rank takes the same step.

    Every rank computes the same global-batch loss; the gathered-with-grad features route each rank's
    share of the gradient back to the rank that produced them (summed over the W identical losses), so
    the rank mean of the local gradients equals the single-process gradient of the global batch.
    """
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(d.world)


def resolve_device(device: str, d: Dist) -> str:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is cuda but no CUDA device is available")
        device = f"cuda:{d.local_rank}"
        torch.cuda.set_device(device)
    return device


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup * total`` steps, then cosine to zero."""
    warm = int(cfg.warmup * total)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_plan(
    features: Features, videos: np.ndarray, seed: int, epoch: int, sampling: str = "pairs"
) -> tuple[np.ndarray, np.ndarray]:
    """(video index, caption row) of every sample of ``epoch``, in order: a pure function of (seed, epoch).

    ``pairs``: every caption of the ``videos`` once, in a seeded order (the reference code's epoch).
    ``videos``: every video once, with one seeded random caption of it.
    """
    rng = np.random.default_rng([seed, epoch])
    caps = features.captions
    if sampling == "pairs":
        rows = np.flatnonzero(np.isin(caps.video_index.to_numpy(), videos))
        chosen = rows[rng.permutation(len(rows))].astype(np.int64)
        return caps.video_index.to_numpy()[chosen].astype(np.int64), chosen
    if sampling != "videos":
        raise ValueError(f"train.sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    order = videos[rng.permutation(len(videos))]
    by_video = caps.groupby("video_index").indices
    chosen = np.array([by_video[v][rng.integers(len(by_video[v]))] for v in order], dtype=np.int64)
    return order, chosen


def run_key(cfg: TrainConfig, features: Features, clip: torch.nn.Module) -> str:
    """The checkpoint key: config, input content, frozen weights and training code, hashed together."""
    blob = json.dumps(
        {
            "cfg": asdict(cfg),
            "features": features.fingerprint(),
            "backbone": tensors_digest(sorted(clip.state_dict().items())),
            "code": source_digest(TRAINING_CODE),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def checkpoint_root() -> Path:
    """Where runs keep their checkpoints: ``$DISCOVLA_CHECKPOINTS`` or ``.work/checkpoints``. One root is
    shared by the train stage, experiments and the ablation: keys are content hashes (:func:`run_key`), so
    a finished run is reused only by an identical one. Set an absolute path for ``dvc exp run --queue``,
    whose runs happen in temporary copies of the repository."""
    return Path(os.environ.get(CHECKPOINTS_ENV) or ".work/checkpoints")


def save_checkpoint(
    ckpt_dir: Path, model: DiscoVLA, opt: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Adapters + optimizer moments as safetensors, counters as JSON; the directory appears atomically."""
    tensors = {
        f"adapter.{k}": v.detach().float().cpu().contiguous() for k, v in model.adapter_state_dict().items()
    }
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    tensors[f"opt.{key}.{names[id(p)]}"] = st[key].detach().float().cpu().contiguous()
            if "step" in st:
                state.setdefault("opt_step", float(st["step"]))
    with atomic_dir(ckpt_dir / f"epoch-{state['epoch']:03d}") as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        write_json(tmp / "state.json", state)


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in run_dir.glob("epoch-*") if (p / "state.json").exists())
    return done[-1] if done else None


def load_checkpoint(path: Path, model: DiscoVLA, opt: torch.optim.Optimizer) -> dict[str, Any]:
    tensors = load_file(str(path / "state.safetensors"))
    state = json.loads((path / "state.json").read_text())
    device = next(iter(model.trainable_parameters())).device
    adapters = {k[len("adapter.") :]: v.to(device) for k, v in tensors.items() if k.startswith("adapter.")}
    model.load_adapter_state_dict(adapters)
    for name, p in model.named_parameters():
        if not p.requires_grad or f"opt.exp_avg.{name}" not in tensors:
            continue
        opt.state[p] = {
            "step": torch.tensor(state["opt_step"]),
            "exp_avg": tensors[f"opt.exp_avg.{name}"].to(p.device, p.dtype),
            "exp_avg_sq": tensors[f"opt.exp_avg_sq.{name}"].to(p.device, p.dtype),
        }
    return state


def normalise(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, S, S] -> float, CLIP mean/std normalised."""
    return (pixels.float() / 255.0 - mean) / std


def train(
    clip: torch.nn.Module,
    features: Features,
    cfg: TrainConfig,
    ckpt_root: str | Path,
    stop_after_epoch: int | None = None,
    on_epoch: Callable[[int, DiscoVLA], dict[str, float]] | None = None,
    progress: bool = True,
) -> tuple[DiscoVLA, dict[str, Any]]:
    """Train DiscoVLA adapters on the train split; return the model and the training record.

    ``stop_after_epoch`` ends the run early (as a crash would) after saving that epoch's checkpoint.
    ``on_epoch(epoch, model)`` may return extra numbers (e.g. validation recall) to record per epoch.
    """
    if cfg.augment not in AUGMENTS:
        raise ValueError(f"train.augment must be one of {', '.join(AUGMENTS)}, got {cfg.augment!r}")
    d = init_distributed(cfg.device)
    device = resolve_device(cfg.device, d)
    key = run_key(cfg, features, clip)  # before LoRA is installed into clip
    torch.manual_seed(cfg.seed)  # adapter init (A: Kaiming-uniform)
    model = DiscoVLA(clip, cfg.model).to(device)
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.startswith("cuda"))

    train_videos = features.split_videos("train")
    if cfg.batch_size % d.world:
        raise ValueError(f"train.batch_size {cfg.batch_size} must be divisible by WORLD_SIZE {d.world}")
    samples = len(epoch_plan(features, train_videos, cfg.seed, 0, cfg.sampling)[0])
    steps_per_epoch = samples // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{samples} train samples ({cfg.sampling}) < train.batch_size {cfg.batch_size}")
    total = steps_per_epoch * cfg.epochs
    mean = torch.tensor(features.meta["mean"], device=device).view(3, 1, 1)
    std = torch.tensor(features.meta["std"], device=device).view(3, 1, 1)
    need_pseudo = cfg.alpha > 0 or cfg.beta > 0

    run_dir = Path(ckpt_root) / key
    record: dict[str, Any] = {"epochs": [], "curve": [], "seconds": 0.0, "checkpoint_key": key}
    record["resumed_from_epoch"] = 0
    start_epoch = 0
    last = latest_checkpoint(run_dir)
    if last is not None:
        state = load_checkpoint(last, model, opt)
        start_epoch, record = state["epoch"], state["record"]
        record["resumed_from_epoch"] = start_epoch
        if d.main:
            print(f"resuming from {last} (epoch {start_epoch} of {cfg.epochs})")

    local = cfg.batch_size // d.world
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order, chosen = epoch_plan(features, train_videos, cfg.seed, epoch, cfg.sampling)
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        bar = tqdm(
            range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and d.main)
        )
        for i in bar:
            step = epoch * steps_per_epoch + i
            lo = i * cfg.batch_size + d.rank * local
            vids = torch.from_numpy(order[lo : lo + local])
            caps = torch.from_numpy(chosen[lo : lo + local])
            raw = augment_batch(features.pixels[vids], cfg.augment, cfg.seed, epoch, range(lo, lo + local))
            pixels = normalise(raw.to(device, non_blocking=True), mean, std)
            tokens = features.cap_tokens[caps].to(device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, cfg)
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=use_bf16):
                frame_feats = model.encode_frames(pixels)
                text_feats = model.encode_text(tokens)
                pseudo = model.encode_pseudo(features.pseudo_tokens[vids].to(device)) if need_pseudo else None
            frame_feats = gather_with_grad(frame_feats.float(), d)
            text_feats = gather_with_grad(text_feats.float(), d)
            pseudo = gather_with_grad(pseudo.float(), d) if pseudo is not None else None
            terms = discovla_loss(
                text_feats,
                frame_feats,
                pseudo,
                model.logit_scale,
                alpha=cfg.alpha,
                beta=cfg.beta,
                detach_teacher=cfg.detach_teacher,
                distill_scale=cfg.distill_scale,
            )
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if d.world > 1:
                average_gradients(params, d)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            vals = {k: float(v.detach()) for k, v in terms.items()}
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v
            record["curve"].append(
                {"step": step + 1, "epoch": epoch + 1, "lr": lr_at(step, total, cfg), **vals}
            )
            bar.set_postfix(loss=f"{vals['loss']:.3f}")
        seconds = time.perf_counter() - t0
        entry = {k: v / steps_per_epoch for k, v in sums.items()}
        entry.update(
            epoch=epoch + 1, seconds=seconds, samples_per_s=steps_per_epoch * cfg.batch_size / seconds
        )
        if on_epoch is not None and d.main:
            model.eval()
            entry.update(on_epoch(epoch + 1, model))
        record["epochs"].append(entry)
        record["seconds"] += seconds
        if d.main:
            save_checkpoint(run_dir, model, opt, {"epoch": epoch + 1, "record": record})
            print(
                f"epoch {epoch + 1}: loss {entry['loss']:.4f} (video {entry['video']:.4f}, "
                f"img {entry['img']:.4f}, distill {entry['distill']:.4f}), "
                f"{entry['samples_per_s']:.1f} videos/s"
            )
        if d.world > 1:
            dist.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.epochs:
            break
    model.eval()
    record["trainable_parameters"] = model.num_trainable()
    record["run_dir"] = str(run_dir)
    return model, record


def save_adapters(out_dir: str | Path, model: DiscoVLA, info: dict[str, Any]) -> None:
    """``adapters.safetensors`` (trainable tensors only) + ``config.json``, as one atomic directory."""
    with atomic_dir(out_dir) as tmp:
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.adapter_state_dict().items()}
        save_file(tensors, str(tmp / "adapters.safetensors"))
        write_json(tmp / "config.json", {"model": model.config_dict(), **info})


def load_adapters(path: str | Path, clip: torch.nn.Module, device: str = "cpu") -> DiscoVLA:
    """Rebuild a trained DiscoVLA from ``adapters.safetensors`` + ``config.json`` and a frozen CLIP."""
    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())["model"]
    model = DiscoVLA(clip, DiscoVLAConfig(**cfg)).to(device)
    model.load_adapter_state_dict(
        {k: v.to(device) for k, v in load_file(str(path / "adapters.safetensors")).items()}
    )
    return model.eval()


def write_curve(path: str | Path, curve: list[dict[str, Any]]) -> None:
    cols = ["step", "epoch", "lr", "loss", "video", "img", "distill"]
    lines = [",".join(cols)] + [",".join(f"{row.get(c, 0.0):.6g}" for c in cols) for row in curve]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
