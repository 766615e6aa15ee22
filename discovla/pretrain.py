"""Contrastive pretraining of the tiny CLIP on the shapes still-image corpus.

CLIP's recipe, scaled down: symmetric InfoNCE between L2-normalised image and caption embeddings with a
learnable logit scale (init ``ln(1/0.07)``, clamped to ``ln(100)``), AdamW with linear warm-up then cosine
decay, from random init. Stills (``image`` = PNG bytes, ``caption``) are decoded once and resized to the
model's image size with PIL bicubic (close to the ffmpeg ``scale`` bicubic filter the ``frames`` stage uses).

Details that matter on this corpus:
- Identical captions in a batch are all positives (soft targets split evenly among them), so a repeated
  one-object caption is never pushed away from its own duplicate.
- Augmentation is a random translation of at most ``shift`` pixels (edge-replicated), so grid-position
  words stay true (objects sit within about 3% of a cell centre; a cell is a third of the image). No flips,
  no colour jitter.
- Evaluation: R@K both ways on held-out stills with distinct captions (the first still of each caption).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from tqdm import tqdm

from discovla.backbone import Backbone, pad_tokens, preprocess_uint8
from discovla.clip_factory import build_model
from discovla.config import PretrainClipParams
from discovla.errors import DiscoVLAError
from discovla.images import decode_png, resize
from discovla.losses import contrastive_loss
from discovla.retrieval import retrieval_metrics
from discovla.schedule import warmup_cosine

MAX_LOGIT_SCALE = math.log(100.0)


class PretrainError(DiscoVLAError, ValueError):
    """Unusable pretraining input (missing corpus, bad columns), with what to do."""


_PRETRAIN = PretrainClipParams()  # defaults live in one place: discovla/config.py


@dataclass(frozen=True)
class PretrainConfig:
    """Training hyper-parameters: params ``pretrain_clip`` plus CLIP's fixed choices."""

    seed: int = _PRETRAIN.seed
    epochs: int = _PRETRAIN.epochs
    batch_size: int = _PRETRAIN.batch_size
    lr: float = _PRETRAIN.lr
    weight_decay: float = _PRETRAIN.weight_decay
    warmup: float = _PRETRAIN.warmup
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float = 1.0
    shift: int = 2


@dataclass
class Stills:
    """Decoded stills: uint8 pixels ``[N, 3, S, S]`` and their captions."""

    pixels: torch.Tensor
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)

    def distinct(self) -> Stills:
        """The first still of every distinct caption (for 1:1 retrieval evaluation)."""
        seen: dict[str, int] = {}
        for i, c in enumerate(self.captions):
            seen.setdefault(c, i)
        idx = sorted(seen.values())
        return Stills(self.pixels[idx], [self.captions[i] for i in idx])


def load_stills(path: str | Path, image_size: int, limit: int | None = None) -> Stills:
    """Decode ``image`` PNGs of a stills Parquet file to ``image_size`` (PIL bicubic when resizing)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainError(f"{path}: stills file not found (run the shapes stage: dvc repro shapes)")
    table = pq.read_table(path)
    missing = {"image", "caption"} - set(table.column_names)
    if missing:
        raise PretrainError(f"{path}: missing column(s) {', '.join(sorted(missing))} (need image, caption)")
    if limit is not None:
        table = table.slice(0, limit)
    images = table.column("image").to_pylist()
    captions = [str(c) for c in table.column("caption").to_pylist()]
    if not images:
        raise PretrainError(f"{path}: no stills")
    out = np.empty((len(images), image_size, image_size, 3), dtype=np.uint8)
    for i, data in enumerate(tqdm(images, desc=f"decode {path.name}", unit="img", leave=False)):
        out[i] = resize(decode_png(data), image_size)
    return Stills(torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), captions)


def random_shift(pixels: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in ``[-max_shift, max_shift]`` on both axes (edge pad)."""
    if max_shift <= 0:
        return pixels
    n, _, h, w = pixels.shape
    padded = F.pad(pixels.float(), (max_shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    rows = offsets[:, 0, None] + torch.arange(h)[None, :]  # [N, H]
    cols = offsets[:, 1, None] + torch.arange(w)[None, :]  # [N, W]
    idx_n = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2).to(pixels.dtype)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's split: no decay for gains, biases, norms and the logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


@torch.no_grad()
def evaluate_stills(backbone: Backbone, stills: Stills, batch_size: int = 512) -> dict[str, Any]:
    """t2i / i2t R@K, MdR, MnR on stills with distinct captions (first still of each caption)."""
    was_training = backbone.model.training
    backbone.model.eval()
    distinct = stills.distinct()
    image_emb = backbone.encode_images(distinct.pixels, batch_size)
    text_emb = backbone.encode_texts(distinct.captions, batch_size)
    backbone.model.train(was_training)
    out = retrieval_metrics(text_emb, image_emb, np.arange(len(distinct)), chunk_size=1024)
    return {"t2i": out["t2v"], "i2t": out["v2t"]}


def train_tiny_clip(
    name: str,
    train: Stills,
    val: Stills,
    cfg: PretrainConfig,
    context_length: int,
    progress: bool = True,
    on_epoch: Callable[[int, Any, dict[str, Any]], None] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Any, dict[str, Any]]:
    """Train config ``name`` from scratch on ``train``; returns the model (eval mode, CPU) and metrics.

    ``on_epoch(epoch, model, record)`` is called after every epoch (record: mean loss, seconds).
    """
    torch.manual_seed(cfg.seed)
    model = build_model(name, device=device)
    model.train()
    backbone = Backbone.from_model(model, name, context_length)
    if backbone.image_size != train.pixels.shape[-1]:
        raise PretrainError(f"stills are {train.pixels.shape[-1]} px, {name} needs {backbone.image_size}")
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch < 1:
        raise PretrainError(f"pretrain_clip.batch_size {cfg.batch_size} exceeds the {len(train)} stills")
    total = steps_per_epoch * cfg.epochs
    tokens = pad_tokens(backbone.tokenize(train.captions), int(model.context_length))
    _, caption_ids = np.unique(np.asarray(train.captions, dtype=object), return_inverse=True)
    caption_ids = torch.from_numpy(caption_ids.astype(np.int64))
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    schedule = warmup_cosine(opt, cfg.warmup, total)
    gen = torch.Generator().manual_seed(cfg.seed)
    history, step, start, loss_value = [], 0, time.time(), float("nan")
    bar = tqdm(total=total, desc="pretrain tiny CLIP", unit="step", disable=not progress)
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train), generator=gen)
        epoch_loss = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            pixels = random_shift(train.pixels[idx], cfg.shift, gen)
            images = preprocess_uint8(pixels, backbone.mean, backbone.std).to(device)
            image_emb = F.normalize(model.encode_image(images), dim=-1)
            text_emb = F.normalize(model.encode_text(tokens[idx].to(device)), dim=-1)
            logits = model.logit_scale.exp() * image_emb @ text_emb.T
            loss = contrastive_loss(logits, caption_ids[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            loss_value = float(loss.detach())
            epoch_loss += loss_value
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
        record = {"epoch": epoch + 1, "loss": epoch_loss / steps_per_epoch, "seconds": time.time() - start}
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch + 1, model, record)
    bar.close()
    seconds = time.time() - start
    model = model.cpu().eval()
    model.requires_grad_(False)
    backbone.logit_scale = float(model.logit_scale.exp())
    metrics = {
        "val": evaluate_stills(backbone, val),
        "train_subset": evaluate_stills(backbone, Stills(train.pixels[:1000], train.captions[:1000])),
        "seconds": round(seconds, 1),
        "steps": step,
        "epochs": cfg.epochs,
        "final_loss": loss_value,
        "logit_scale": backbone.logit_scale,
        "device": str(device),
        "train_stills": len(train),
        "val_stills": len(val),
        "val_distinct": len(val.distinct()),
    }
    return model, {**metrics, "history": history}
