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
module that training and its monitoring import. Any changed byte of those starts a fresh run. One process
trains a key at a time (a lock in its run directory; another waits, then reuses the finished run). Under
``torchrun`` rank 0 decides where the run resumes and broadcasts that checkpoint's state, so every rank
resumes the same epoch from the same weights whatever its own checkpoint root holds.

An epoch is, as in the reference code, every (video, caption) pair of the train split once
(``sampling="pairs"``), or one random caption per video (``sampling="videos"``). Training frames may be
augmented on the fly (``augment="randaugment"``, :mod:`discovla.augment`), one draw per sample that is a
pure function of (seed, epoch, sample position).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from discovla.artifacts.adapters import (
    RunLock,
    apply_checkpoint,
    latest_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from discovla.artifacts.features import Features
from discovla.config import FusionParams, TemporalParams, TrainParams
from discovla.distributed import (
    Dist,
    average_gradients,
    broadcast_json,
    broadcast_tensors,
    check_replicas,
    gather_with_grad,
    init_distributed,
)
from discovla.images import normalise
from discovla.loader import TrainBatches, make_loader
from discovla.losses import discovla_loss
from discovla.model import DiscoVLA, DiscoVLAConfig
from discovla.order import order_copies, order_perms
from discovla.provenance import source_digest, tensors_digest
from discovla.runtime import resolve_device
from discovla.schedule import fast_forward, warmup_cosine

SAMPLINGS = ("pairs", "videos")
# what a checkpoint's content depends on: the loop, the model and losses it imports, the backbone builder
# (activation choice, weight loading) and the monitoring code whose numbers the checkpoint records
TRAINING_CODE = ("discovla.train", "discovla.backbone", "discovla.evaluate")


_TRAIN, _FUSION, _TEMPORAL = TrainParams(), FusionParams(), TemporalParams()  # defaults: discovla/config.py


@dataclass(frozen=True)
class TrainConfig:
    """How to train (params ``train`` and the loss weights of ``fusion``; defaults are params.yaml's)."""

    seed: int = _TRAIN.seed
    epochs: int = _TRAIN.epochs
    batch_size: int = _TRAIN.batch_size  # global batch (videos)
    lr: float = _TRAIN.lr
    weight_decay: float = _TRAIN.weight_decay
    betas: tuple[float, float] = (_TRAIN.beta1, _TRAIN.beta2)
    eps: float = _TRAIN.eps
    warmup: float = _TRAIN.warmup
    grad_clip: float = _TRAIN.grad_clip
    sampling: str = _TRAIN.sampling  # pairs: every (video, caption) pair once per epoch | videos: one each
    augment: str = _TRAIN.augment  # none | randaugment (reference policy, same ops on all frames of a video)
    alpha: float = _FUSION.alpha
    beta: float = _FUSION.beta
    detach_teacher: bool = _FUSION.detach_teacher
    distill_scale: str = _FUSION.distill_scale
    order_weight: float = _TEMPORAL.order_weight  # weight of L_order (time-reversed copies as negatives)
    shuffled: bool = _TEMPORAL.shuffled  # L_order also gets a frame-shuffled copy of every video
    device: str = _TRAIN.device
    precision: str = _TRAIN.precision
    workers: int = _TRAIN.workers  # loader worker processes (0: read in the training process)
    activation_checkpointing: bool = _TRAIN.activation_checkpointing  # recompute each block in backward
    fused: bool | None = None  # AdamW's fused kernel; None: on CUDA only (the CPU keeps the reference path)
    model: DiscoVLAConfig = field(default_factory=DiscoVLAConfig)


# how a run executes, not what it computes: left out of the checkpoint key, so a run may resume with them
# changed (the loader's batches and the recomputed activations are exactly those of the plain path)
EXECUTION_FIELDS = ("workers", "activation_checkpointing")


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


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether training runs under bf16 autocast: ``bf16``, or ``auto`` on CUDA."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def run_key(cfg: TrainConfig, features: Features, clip: torch.nn.Module) -> str:
    """The checkpoint key: config, input content, frozen weights and training code, hashed together. The
    device and precision enter as resolved here (``auto`` is CUDA and bf16 on a GPU machine, CPU and fp32
    elsewhere), so a run made on a GPU is never taken for one made on a CPU, or the other way round."""
    config = {k: v for k, v in asdict(cfg).items() if k not in EXECUTION_FIELDS}
    device = resolve_device(cfg.device)
    config.update(device=device.type, precision="bf16" if uses_bf16(cfg.precision, device) else "fp32")
    blob = json.dumps(
        {
            "cfg": config,
            "features": features.fingerprint(),
            "backbone": tensors_digest(sorted(clip.state_dict().items())),
            "code": source_digest(TRAINING_CODE),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


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
    d, device = init_distributed(cfg.device)
    key = run_key(cfg, features, clip)  # before LoRA is installed into clip
    torch.manual_seed(cfg.seed)  # adapter init (A: Kaiming-uniform)
    model = DiscoVLA(clip, cfg.model).to(device)
    model.set_activation_checkpointing(cfg.activation_checkpointing)
    params = model.trainable_parameters()
    fused = device.type == "cuda" if cfg.fused is None else cfg.fused  # one kernel for all adapters' updates
    opt = torch.optim.AdamW(
        params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=fused or None
    )
    train_videos = features.split_videos("train")
    if cfg.batch_size % d.world:
        raise ValueError(f"train.batch_size {cfg.batch_size} must be divisible by WORLD_SIZE {d.world}")
    samples = len(epoch_plan(features, train_videos, cfg.seed, 0, cfg.sampling)[0])
    steps_per_epoch = samples // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{samples} train samples ({cfg.sampling}) < train.batch_size {cfg.batch_size}")
    schedule = warmup_cosine(opt, cfg.warmup, steps_per_epoch * cfg.epochs)
    if cfg.order_weight > 0 and cfg.shuffled:
        # fails now, not at the first step, with too few frames
        order_perms(cfg.seed, cfg.shuffled, 0, features.num_frames)

    run_dir = Path(ckpt_root) / key
    lock = _lock_run(run_dir, d)  # rank 0 holds it; a second process training this key waits, then reuses
    try:
        start_epoch, record = _resume(run_dir, model, opt, key, d, cfg.epochs)
        fast_forward(schedule, start_epoch * steps_per_epoch)  # the schedule where the run stopped
        check_replicas(_replica_checksum(model, opt, start_epoch), d, f"resume at epoch {start_epoch}")
        _train_epochs(
            model,
            opt,
            schedule,
            features,
            cfg,
            d,
            device,
            run_dir,
            record,
            start_epoch,
            steps_per_epoch,
            stop_after_epoch,
            on_epoch,
            progress,
        )
    finally:
        if lock is not None:
            lock.release()
    model.eval()
    record["trainable_parameters"] = model.num_trainable()
    record["run_dir"] = str(run_dir)
    return model, record


def _lock_run(run_dir: Path, d: Dist) -> RunLock | None:
    """Rank 0 takes the run's lock (:class:`RunLock`), saying so if it has to wait; the other ranks wait
    with it in a broadcast that rank 0 repeats every second, so no collective ever waits long."""
    lock = RunLock(run_dir) if d.main else None
    held = lock.acquire(block=False) if lock is not None else False
    said = False
    while True:
        if lock is not None and not held and not said:
            print(f"waiting for {lock.path}: another process is training this run", flush=True)
            said = True
        if d.world == 1:
            if not held:
                assert lock is not None
                lock.acquire(block=True)
            break
        if broadcast_json(held, d):
            break
        if lock is not None:
            time.sleep(1.0)
            held = lock.acquire(block=False)
    if said:
        print(f"got {lock.path if lock else run_dir}: reusing what the other process finished", flush=True)
    return lock


def _resume(
    run_dir: Path, model: DiscoVLA, opt: torch.optim.Optimizer, key: str, d: Dist, epochs: int
) -> tuple[int, dict[str, Any]]:
    """Rank 0 picks the latest checkpoint of ``run_dir`` (its own checkpoint root decides) and broadcasts
    its epoch, record and tensors, so every rank resumes the same epoch from the same state even when the
    ranks' checkpoint roots differ (nodes without a shared disk). Returns (start epoch, record)."""
    tensors, state, last = None, None, None
    if d.main:
        last = latest_checkpoint(run_dir)
        if last is not None:
            tensors, state = read_checkpoint(last)
    state = broadcast_json(state, d)
    if state is None:
        return 0, {"epochs": [], "curve": [], "seconds": 0.0, "checkpoint_key": key, "resumed_from_epoch": 0}
    tensors = broadcast_tensors(tensors, d)
    apply_checkpoint(tensors, state, model, opt)
    record = state["record"]
    record["resumed_from_epoch"] = state["epoch"]
    if d.main:
        print(f"resuming from {last} (epoch {state['epoch']} of {epochs})")
    return int(state["epoch"]), record


def _replica_checksum(model: DiscoVLA, opt: torch.optim.Optimizer, epoch: int) -> torch.Tensor:
    """The epoch and, per trainable tensor, the sums of its values and of the AdamW moments: equal on every
    rank exactly when the ranks agree (up to checksum collisions)."""
    sums = [torch.tensor(float(epoch), dtype=torch.float64)]
    for p in model.trainable_parameters():
        sums.append(p.detach().double().sum().cpu())
        st = opt.state.get(p, {})
        for k in ("step", "exp_avg", "exp_avg_sq"):
            if k in st:
                sums.append(st[k].detach().double().sum().cpu())
    return torch.stack(sums)


def _train_epochs(
    model: DiscoVLA,
    opt: torch.optim.Optimizer,
    schedule: Any,
    features: Features,
    cfg: TrainConfig,
    d: Dist,
    device: torch.device,
    run_dir: Path,
    record: dict[str, Any],
    start_epoch: int,
    steps_per_epoch: int,
    stop_after_epoch: int | None,
    on_epoch: Callable[[int, DiscoVLA], dict[str, float]] | None,
    progress: bool,
) -> None:
    """Epochs ``start_epoch..cfg.epochs`` (or up to ``stop_after_epoch``), a checkpoint after each."""
    params = model.trainable_parameters()
    train_videos = features.split_videos("train")
    mean, std = features.meta["mean"], features.meta["std"]
    need_pseudo = cfg.alpha > 0 or cfg.beta > 0
    use_bf16 = uses_bf16(cfg.precision, device)
    pin = device.type == "cuda"
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order, chosen = epoch_plan(features, train_videos, cfg.seed, epoch, cfg.sampling)
        plan = TrainBatches(
            features.pixels,
            features.cap_tokens,
            features.pseudo_tokens if need_pseudo else None,
            order,
            chosen,
            cfg.batch_size,
            cfg.augment,
            cfg.seed,
            epoch,
            d.rank,
            d.world,
        )
        batches = iter(make_loader(plan, cfg.workers, pin_memory=pin))
        t0 = time.perf_counter()
        waited = 0.0
        sums: dict[str, float] = {}
        bar = tqdm(
            range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and d.main)
        )
        for i in bar:
            step = epoch * steps_per_epoch + i
            t_wait = time.perf_counter()
            batch = next(batches)
            waited += time.perf_counter() - t_wait
            pixels = normalise(batch["pixels"].to(device, non_blocking=True), mean, std)
            tokens = batch["tokens"].to(device, non_blocking=True)
            lr = opt.param_groups[0]["lr"]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                frame_feats = model.encode_frames(pixels)
                text_feats = model.encode_text(tokens)
                pseudo = (
                    model.encode_pseudo(batch["pseudo"].to(device, non_blocking=True))
                    if need_pseudo
                    else None
                )
            frame_feats = gather_with_grad(frame_feats.float(), d)
            text_feats = gather_with_grad(text_feats.float(), d)
            pseudo = gather_with_grad(pseudo.float(), d) if pseudo is not None else None
            copies = None
            if cfg.order_weight > 0:
                perms = order_perms(cfg.seed, cfg.shuffled, step, frame_feats.shape[1])
                copies = order_copies(model, pixels, frame_feats, perms, d, use_bf16)
            terms = discovla_loss(
                text_feats,
                frame_feats,
                pseudo,
                model.logit_scale,
                alpha=cfg.alpha,
                beta=cfg.beta,
                detach_teacher=cfg.detach_teacher,
                distill_scale=cfg.distill_scale,
                video=model.video_embedding(frame_feats),
                order_copies=copies,
                order_weight=cfg.order_weight,
            )
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if d.world > 1:
                average_gradients(params, d)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            schedule.step()
            vals = {k: float(v.detach()) for k, v in terms.items()}
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v
            record["curve"].append({"step": step + 1, "epoch": epoch + 1, "lr": lr, **vals})
            bar.set_postfix(loss=f"{vals['loss']:.3f}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        entry = {k: v / steps_per_epoch for k, v in sums.items()}
        entry.update(
            epoch=epoch + 1,
            seconds=seconds,
            samples_per_s=steps_per_epoch * cfg.batch_size / seconds,
            data_wait=waited / seconds,  # fraction of the epoch spent waiting for the loader
        )
        if on_epoch is not None and d.main:
            model.eval()
            entry.update(on_epoch(epoch + 1, model))
        record["epochs"].append(entry)
        record["seconds"] += seconds
        # every rank finished this epoch with rank 0's weights and moments before rank 0 checkpoints it
        check_replicas(_replica_checksum(model, opt, epoch + 1), d, f"end of epoch {epoch + 1}")
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
