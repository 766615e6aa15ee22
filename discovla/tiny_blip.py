"""The tiny BLIP captioner of the shapes world: vocabulary, processor, config, training and evaluation.

A small :class:`~transformers.BlipConfig` (sizes in ``discovla/configs/tiny-blip.json``) with a word-level
BERT vocabulary built offline from the still-image corpus, trained from scratch with teacher forcing
(:func:`pretrain_tiny_captioner`) and saved with ``save_pretrained``, so that
``load_captioner("models/tiny-blip")`` takes the same path as a hub model. :func:`evaluate_captioner` scores
captions of held-out stills against the generator's ground truth (:func:`caption_agreement`).

BLIP's ``generate`` (transformers 5) starts every caption from ``text_config.bos_token_id`` and stops at
``text_config.sep_token_id``; training therefore replaces the tokenizer's ``[CLS]`` by ``[DEC]`` (the bos
token) and ends every target with ``[SEP]``, exactly like the released BLIP captioners.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from discovla.batching import batches
from discovla.captioner import Captioner
from discovla.data.shapes import caption_agreement
from discovla.images import decode_png
from discovla.io import atomic_dir
from discovla.runtime import resolve_device
from discovla.schedule import warmup_cosine
from discovla.text import CaptionsError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID, BOS_ID = range(len(SPECIAL_TOKENS))
TINY_BLIP_CONFIG = Path(__file__).parent / "configs" / "tiny-blip.json"

StillImage = bytes | Image.Image  # PNG bytes (the stills corpus) or a PIL image


@dataclass(frozen=True)
class TinyBlipSpec:
    """Sizes of the tiny captioner (defaults: ``discovla/configs/tiny-blip.json``)."""

    image_size: int = 32
    patch_size: int = 4
    vision_hidden: int = 96
    vision_layers: int = 3
    text_hidden: int = 96
    text_layers: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    max_positions: int = 40

    @classmethod
    def from_json(cls, path: str | Path = TINY_BLIP_CONFIG) -> TinyBlipSpec:
        """The spec in a JSON file of these keys; an unknown key is a :class:`CaptionsError`."""
        raw = json.loads(Path(path).read_text())
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise CaptionsError(f"{path}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
        return cls(**raw)


# --------------------------------------------------------------------------------------------------------
# Vocabulary, processor and config


_WORD = re.compile(r"\w+|[^\w\s]")


def caption_words(text: str) -> list[str]:
    """Words and punctuation marks the way BERT's basic tokenizer splits a lower-cased caption."""
    return _WORD.findall(text.lower())


def build_vocab(captions: Sequence[str]) -> list[str]:
    """Special tokens (``[PAD] [UNK] [CLS] [SEP] [MASK] [DEC]``) then the corpus words, sorted."""
    words = sorted({w for c in captions for w in caption_words(c)} - set(SPECIAL_TOKENS))
    if not words:
        raise CaptionsError("cannot build a vocabulary from an empty caption corpus")
    return [*SPECIAL_TOKENS, *words]


def build_processor(vocab_file: str | Path, image_size: int) -> Any:
    """``BlipProcessor`` with a word-level ``BertTokenizer`` over ``vocab_file`` and a BICUBIC resize."""
    from transformers import BertTokenizer, BlipImageProcessor, BlipProcessor

    tokenizer = BertTokenizer(
        vocab=str(vocab_file),
        do_lower_case=True,
        bos_token="[DEC]",
        model_max_length=512,
    )
    image_processor = BlipImageProcessor(
        size={"height": image_size, "width": image_size},
        do_resize=True,
        resample=Image.Resampling.BICUBIC,
        do_rescale=True,
        do_normalize=True,
        do_convert_rgb=True,
    )
    return BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def tiny_blip_config(vocab_size: int, spec: TinyBlipSpec) -> Any:
    """A small BlipConfig whose generate() starts at ``[DEC]`` and stops at ``[SEP]``."""
    from transformers import BlipConfig

    text = dict(
        vocab_size=vocab_size,
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_hidden * spec.mlp_ratio,
        projection_dim=spec.text_hidden,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=BOS_ID,
        eos_token_id=SEP_ID,
        sep_token_id=SEP_ID,
        pad_token_id=PAD_ID,
    )
    vision = dict(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * spec.mlp_ratio,
        projection_dim=spec.vision_hidden,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        initializer_range=0.02,  # BLIP's default (1e-10) assumes pretrained weights are loaded
    )
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=spec.text_hidden)


# --------------------------------------------------------------------------------------------------------
# Training


def _as_pil(image: StillImage) -> Image.Image:
    return Image.fromarray(decode_png(image)) if isinstance(image, bytes) else image


def _pixel_values(
    processor: Any, images: Sequence[StillImage], chunk: int = 1024, progress: bool = True
) -> torch.Tensor:
    """Preprocess PNG bytes / PIL images once, in chunks (the same processor as at caption time)."""
    parts = []
    for rows in tqdm(list(batches(len(images), chunk)), desc="preprocessing", disable=not progress):
        batch = [_as_pil(x) for x in images[rows]]
        parts.append(processor(images=batch, return_tensors="pt")["pixel_values"])
    return torch.cat(parts)


def _teacher_forcing_targets(tokenizer: Any, captions: Sequence[str], max_len: int) -> torch.Tensor:
    """``[DEC] words [SEP] [PAD]...`` ids; raises if a caption does not fit or hits ``[UNK]``."""
    enc = tokenizer(list(captions), padding="longest", return_tensors="pt")
    ids = enc["input_ids"]
    if ids.shape[1] > max_len:
        raise CaptionsError(f"a caption has {ids.shape[1]} tokens, more than max_positions={max_len}")
    if (ids == UNK_ID).any():
        raise CaptionsError("a caption contains a word outside the vocabulary (vocabulary built elsewhere?)")
    ids[:, 0] = BOS_ID
    return ids


def pretrain_tiny_captioner(
    images: Sequence[StillImage],
    captions: Sequence[str],
    out_dir: str | Path,
    *,
    seed: int = 42,
    epochs: int = 6,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    warmup: float = 0.05,
    spec: TinyBlipSpec | None = None,
    max_steps: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> tuple[Captioner, dict[str, Any]]:
    """Train the tiny BLIP from scratch on (image, caption) pairs and save it atomically to ``out_dir``.

    ``images``: PNG bytes or PIL images. Teacher forcing: labels = input ids with padding set to -100;
    AdamW with linear warm-up then cosine decay, gradient clipping at 1.0; CUDA when ``device`` is auto and
    available (deterministic on the CPU for a given seed).
    Returns the in-memory captioner and training stats (steps, seconds, final loss, parameters).
    """
    from transformers import BlipForConditionalGeneration

    if len(images) != len(captions) or not len(images):
        raise CaptionsError(f"need as many images as captions (> 0), got {len(images)} and {len(captions)}")
    spec = spec or TinyBlipSpec.from_json()
    dev = resolve_device(device)
    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        vocab_file = tmp / "vocab.txt"
        vocab_file.write_text("\n".join(build_vocab(captions)) + "\n")
        processor = build_processor(vocab_file, spec.image_size)
        ids = _teacher_forcing_targets(processor.tokenizer, captions, spec.max_positions)
        pixels = _pixel_values(processor, images, progress=progress)
        model = BlipForConditionalGeneration(tiny_blip_config(len(processor.tokenizer), spec)).to(dev)
        stats = _train_loop(
            model, pixels, ids, seed, epochs, batch_size, lr, weight_decay, warmup, max_steps, progress
        )
        stats["device"] = dev.type
        stats["parameters"] = sum(p.numel() for p in model.parameters())
        stats["vocab_size"] = len(processor.tokenizer)
        model.eval()
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Captioner(model, processor, dev, name=str(out_dir)), stats


def _train_loop(
    model: Any,
    pixels: torch.Tensor,
    ids: torch.Tensor,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup: float,
    max_steps: int | None,
    progress: bool,
) -> dict[str, Any]:
    n, device = len(ids), next(model.parameters()).device
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = warmup_cosine(optim, warmup, total)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    step, losses, start = 0, [], time.perf_counter()
    with tqdm(total=total, desc="pretrain captioner", unit="step", disable=not progress) as bar:
        while step < total:
            for idx in torch.randperm(n, generator=gen).split(batch_size):
                if step >= total:
                    break
                batch_ids = ids[idx]
                batch_ids = batch_ids[:, : int((batch_ids != PAD_ID).sum(1).max())]
                batch_ids = batch_ids.to(device)
                mask = (batch_ids != PAD_ID).long()
                out = model(
                    pixel_values=pixels[idx].to(device),
                    input_ids=batch_ids,
                    attention_mask=mask,
                    labels=batch_ids.masked_fill(mask == 0, -100),
                )
                optim.zero_grad(set_to_none=True)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optim.step()
                sched.step()
                step += 1
                losses.append(float(out.loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                bar.update(1)
    window = max(1, min(10, len(losses) // 3))  # mean over a few steps: one batch is noisy
    return {
        "steps": step,
        "seconds": round(time.perf_counter() - start, 2),
        "first_loss": round(float(np.mean(losses[:window])), 4),
        "final_loss": round(float(np.mean(losses[-window:])), 4),
    }


# --------------------------------------------------------------------------------------------------------
# Scoring against the shapes world's ground truth


def evaluate_captioner(
    captioner: Captioner, images: Sequence[StillImage], captions: Sequence[str], batch_size: int = 256
) -> dict[str, Any]:
    """Caption held-out stills (PNG bytes or PIL) greedily and score them against their captions."""
    pil = [_as_pil(x) for x in images]
    start, unfinished = time.perf_counter(), captioner.unfinished
    predicted = captioner.caption(pil, batch_size, captioner.max_new_tokens_limit, num_beams=1)
    seconds = time.perf_counter() - start
    out = {"images": len(pil), **caption_agreement(predicted, captions)}
    out["empty_captions"] = sum(not p for p in predicted)
    out["unfinished_captions"] = captioner.unfinished - unfinished
    out["captions_per_s"] = round(len(pil) / max(seconds, 1e-9), 1)
    out["examples"] = [{"truth": t, "predicted": p} for t, p in zip(captions[:5], predicted[:5], strict=True)]
    return out
