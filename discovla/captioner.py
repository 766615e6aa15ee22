"""Pseudo image captions: a BLIP captioner (hub, local or the tiny one trained here) and the captions stage.

Four parts:

- :func:`load_captioner` wraps ``transformers`` ``BlipForConditionalGeneration`` + ``BlipProcessor`` from a
  hub id (``Salesforce/blip-image-captioning-base`` / ``-large``) or a local ``save_pretrained`` directory;
  :meth:`Captioner.caption` turns images into lower-case, single-spaced captions (batched, no grad).
- The tiny captioner of the shapes world: a small :class:`~transformers.BlipConfig` (sizes in
  ``discovla/configs/tiny-blip.json``) with a word-level BERT vocabulary built offline from the still-image
  corpus, trained from scratch with teacher forcing (:func:`pretrain_tiny_captioner`) and saved with
  ``save_pretrained``, so that ``load_captioner("models/tiny-blip")`` takes the same path as a hub model.
- The captions stage (:func:`make_captions`): one caption per row of the frames shards, read in batches;
  ``captioner.model: oracle`` writes the shapes world's ground-truth still captions instead (an upper bound),
  and a ``.json`` path imports published pseudo captions; on the shapes world the captions are scored
  against the generator's ground truth (:func:`caption_agreement`).
- :func:`export_pseudo_captions` / :func:`import_pseudo_captions`: the DiscoVLA release form, a JSON
  object ``{"<video_id>": [caption of frame 0, caption of frame 1, ...]}``.

BLIP's ``generate`` (transformers 5) starts every caption from ``text_config.bos_token_id`` and stops at
``text_config.sep_token_id``; training therefore replaces the tokenizer's ``[CLS]`` by ``[DEC]`` (the bos
token) and ends every target with ``[SEP]``, exactly like the released BLIP captioners.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from tqdm.auto import tqdm

from discovla.errors import DiscoVLAError
from discovla.io import atomic_dir, write_json, write_parquet

ORACLE = "oracle"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID, BOS_ID = range(len(SPECIAL_TOKENS))
TINY_BLIP_CONFIG = Path(__file__).parent / "configs" / "tiny-blip.json"
CAPTIONS_SCHEMA = pa.schema([("video_id", pa.string()), ("frame", pa.int32()), ("caption", pa.string())])

ImageBatch = Sequence[Image.Image] | np.ndarray


class CaptionerUnavailable(DiscoVLAError, RuntimeError):
    """The captioner cannot be loaded (offline hub id, missing directory); the message says what to do."""


class CaptionsError(DiscoVLAError, ValueError):
    """Bad input to the captions stage or to pseudo-caption import/export, with what is wrong."""


# --------------------------------------------------------------------------------------------------------
# Captioner


_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")


def normalize_caption(text: str) -> str:
    """Lower-case, single-spaced, stripped caption, no space before punctuation (``a , b`` -> ``a, b``)."""
    return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.lower().split()))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CaptionerUnavailable(f"device {device!r} requested but CUDA is not available (use auto or cpu)")
    return torch.device(device)


def _to_pil_list(images: ImageBatch) -> list[Image.Image]:
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise CaptionsError(
                f"images array must be uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}"
            )
        return [Image.fromarray(img) for img in images]
    out = []
    for img in images:
        if not isinstance(img, Image.Image):
            raise CaptionsError(f"images must be PIL images or a uint8 [N, H, W, 3] array, got {type(img)}")
        out.append(img if img.mode == "RGB" else img.convert("RGB"))
    return out


class Captioner:
    """A BLIP captioning model with its processor, on one device."""

    def __init__(
        self, model: Any, processor: Any, device: str | torch.device = "auto", name: str = ""
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.name = name
        self.unfinished = 0  # captions cut at max_new_tokens before the end token, since construction

    @property
    def max_new_tokens_limit(self) -> int:
        """Longest caption the text decoder's position embeddings allow after the bos token."""
        return int(self.model.config.text_config.max_position_embeddings) - 1

    @torch.no_grad()
    def _caption_batch(self, images: list[Image.Image], max_new_tokens: int, num_beams: int) -> list[str]:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, dtype=self.model.dtype)
        ids = self.model.generate(
            pixel_values=pixels,
            max_new_tokens=min(max_new_tokens, self.max_new_tokens_limit),
            num_beams=num_beams,
            do_sample=False,
        )
        self.unfinished += int((~(ids[:, 1:] == self.model.config.text_config.sep_token_id).any(1)).sum())
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        return [normalize_caption(t) for t in texts]

    def caption(
        self,
        images: ImageBatch,
        batch_size: int = 64,
        max_new_tokens: int = 24,
        num_beams: int = 1,
        progress: bool = True,
    ) -> list[str]:
        """One caption per image (special tokens stripped, lower-case, single-spaced; may be empty)."""
        if batch_size < 1 or max_new_tokens < 1 or num_beams < 1:
            raise CaptionsError("batch_size, max_new_tokens and num_beams must be >= 1")
        captions: list[str] = []
        with tqdm(total=len(images), desc="captioning", unit="img", disable=not progress) as bar:
            for start in range(0, len(images), batch_size):
                chunk = _to_pil_list(images[start : start + batch_size])
                captions.extend(self._caption_batch(chunk, max_new_tokens, num_beams))
                bar.update(len(chunk))
        return captions


def _looks_local(model: str) -> bool:
    """A path rather than a hub ``owner/name`` id (absolute, ``./``-relative, or under an existing folder)."""
    if model.startswith(("/", ".", "~")) or model.count("/") != 1:
        return True
    return Path(model.split("/")[0]).is_dir()


def _hub_hint(repo_id: str) -> str:
    local = "models/" + repo_id.split("/")[-1].replace("-image-captioning", "")
    return (
        f"captioner.model: {repo_id!r} is not available offline (no network or HF_HUB_OFFLINE=1, and not "
        f"in the Hugging Face cache). On a machine with network run "
        f"`hf download {repo_id} --local-dir {local}` "
        f"(older clients: `huggingface-cli download {repo_id} --local-dir {local}`), copy {local} here and "
        f"set `captioner.model: {local}` in params.yaml"
    )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Quick TCP probe of the hub endpoint: without network, fail at once rather than after retries."""
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _from_pretrained(source: str, local_files_only: bool) -> tuple[Any, Any]:
    from transformers import BlipForConditionalGeneration, BlipProcessor

    processor = BlipProcessor.from_pretrained(source, local_files_only=local_files_only)
    net = BlipForConditionalGeneration.from_pretrained(source, local_files_only=local_files_only)
    return processor, net


def load_captioner(model: str, device: str | torch.device = "auto") -> Captioner:
    """Load a BLIP captioner from a hub id or a local ``save_pretrained`` directory.

    Raises :class:`CaptionerUnavailable` with one message saying what to download or build.
    """
    if model == ORACLE:
        raise CaptionerUnavailable(
            "captioner.model: 'oracle' is not a model (only the captions stage takes it)"
        )
    path = Path(model).expanduser()
    local = path.is_dir()
    if not local and _looks_local(model):
        raise CaptionerUnavailable(
            f"captioner.model: directory {model!r} not found (build the tiny captioner with "
            "`python stages/pretrain_captioner.py`, or give a hub id such as "
            "Salesforce/blip-image-captioning-base)"
        )
    if local:
        try:
            processor, net = _from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CaptionerUnavailable(
                f"captioner.model: {model!r} is not a BLIP captioner saved with save_pretrained "
                f"(model + processor): {reason}"
            ) from exc
        return Captioner(net, processor, device, name=model)
    try:  # the Hugging Face cache first: no network needed
        processor, net = _from_pretrained(model, local_files_only=True)
    except (OSError, ValueError, KeyError):
        if _hub_offline() or not _hub_reachable():
            raise CaptionerUnavailable(_hub_hint(model)) from None
        try:
            processor, net = _from_pretrained(model, local_files_only=False)
        except (OSError, ValueError, KeyError) as exc:
            raise CaptionerUnavailable(
                f"captioner.model: cannot load {model!r} from the Hugging Face Hub ({exc}); give a BLIP "
                "captioning repo id (Salesforce/blip-image-captioning-base) or a local directory"
            ) from exc
    return Captioner(net, processor, device, name=model)


# --------------------------------------------------------------------------------------------------------
# Tiny BLIP for the shapes world


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
        raw = json.loads(Path(path).read_text())
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise CaptionsError(f"{path}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
        return cls(**raw)


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


def decode_png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _pixel_values(
    processor: Any, images: Sequence[Any], chunk: int = 1024, progress: bool = True
) -> torch.Tensor:
    """Preprocess PNG bytes / PIL images once, in chunks (the same processor as at caption time)."""
    parts = []
    for start in tqdm(range(0, len(images), chunk), desc="preprocessing", disable=not progress):
        batch = [decode_png(x) if isinstance(x, bytes) else x for x in images[start : start + chunk]]
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


def _lr_lambda(total: int, warmup: float) -> Callable[[int], float]:
    warm = max(1, int(round(total * warmup)))

    def fn(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return fn


def pretrain_tiny_captioner(
    images: Sequence[Any],
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
    sched = torch.optim.lr_scheduler.LambdaLR(optim, _lr_lambda(total, warmup))
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
# Caption scoring (shapes world)


def caption_agreement(predicted: Sequence[str], truth: Sequence[str]) -> dict[str, Any]:
    """Exact-match rate and, per attribute, the fraction of captions whose set of words equals the truth's.

    Attributes are parsed by :func:`discovla.data.shapes.caption_attributes` (colours, shapes, sizes,
    positions); the comparison is of sets, so repeats and order do not count.
    """
    if len(predicted) != len(truth):
        raise CaptionsError(f"{len(predicted)} predicted captions for {len(truth)} ground-truth captions")
    if not len(truth):
        raise CaptionsError("no captions to score")
    from discovla.data.shapes import caption_attributes as parse

    exact = [normalize_caption(p) == normalize_caption(t) for p, t in zip(predicted, truth, strict=True)]
    hits: dict[str, int] = {}
    for p, t in zip(predicted, truth, strict=True):
        pa_, ta = parse(p), parse(t)
        for name in ta:
            hits[name] = hits.get(name, 0) + (set(pa_.get(name, [])) == set(ta[name]))
    out: dict[str, Any] = {"exact_match": round(float(np.mean(exact)), 4)}
    out.update({name: round(h / len(truth), 4) for name, h in hits.items()})
    return out


def evaluate_captioner(
    captioner: Captioner, images: Sequence[Any], captions: Sequence[str], batch_size: int = 256
) -> dict[str, Any]:
    """Caption held-out stills (PNG bytes or PIL) greedily and score them against their captions."""
    pil = [decode_png(x) if isinstance(x, bytes) else x for x in images]
    start, unfinished = time.perf_counter(), captioner.unfinished
    predicted = captioner.caption(pil, batch_size, captioner.max_new_tokens_limit, num_beams=1)
    seconds = time.perf_counter() - start
    out = {"images": len(pil), **caption_agreement(predicted, captions)}
    out["empty_captions"] = sum(not p for p in predicted)
    out["unfinished_captions"] = captioner.unfinished - unfinished
    out["captions_per_s"] = round(len(pil) / max(seconds, 1e-9), 1)
    out["examples"] = [{"truth": t, "predicted": p} for t, p in zip(captions[:5], predicted[:5], strict=True)]
    return out


# --------------------------------------------------------------------------------------------------------
# Frames -> captions (the captions stage)


def frame_shards(frames_dir: str | Path) -> list[Path]:
    shards = sorted(Path(frames_dir).glob("shard-*.parquet"))
    if not shards:
        raise CaptionsError(f"no frames shards {frames_dir}/shard-*.parquet (run the frames stage first)")
    return shards


def read_frames_index(frames_dir: str | Path) -> pd.DataFrame:
    """``video_id, frame, timestamp`` of every frame row, in shard order (images not read)."""
    cols = ["video_id", "frame", "timestamp"]
    df = pd.concat([pq.read_table(s, columns=cols).to_pandas() for s in frame_shards(frames_dir)])
    df = df.reset_index(drop=True)
    df["frame"] = df["frame"].astype("int32")
    if df.duplicated(["video_id", "frame"]).any():
        raise CaptionsError(f"{frames_dir}: duplicate (video_id, frame) rows in the frames shards")
    return df


def iter_frame_batches(
    frames_dir: str | Path, batch_rows: int
) -> Iterator[tuple[pd.DataFrame, list[Image.Image]]]:
    """Frame keys and decoded RGB images, ``batch_rows`` at a time, in shard order."""
    for shard in frame_shards(frames_dir):
        pf = pq.ParquetFile(shard)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=["video_id", "frame", "image"]):
            keys = pa.Table.from_batches([batch]).select(["video_id", "frame"]).to_pandas()
            yield keys, [decode_png(b) for b in batch.column("image").to_pylist()]


def caption_frames(
    captioner: Captioner, frames_dir: str | Path, batch_size: int, max_new_tokens: int, num_beams: int
) -> pd.DataFrame:
    """One caption per frame row of the shards: ``video_id, frame, caption``."""
    total = sum(pq.ParquetFile(s).metadata.num_rows for s in frame_shards(frames_dir))
    parts = []
    with tqdm(total=total, desc=f"captions ({captioner.device.type})", unit="frame") as bar:
        for keys, images in iter_frame_batches(frames_dir, batch_size):
            keys["caption"] = captioner.caption(images, batch_size, max_new_tokens, num_beams, progress=False)
            parts.append(keys)
            bar.update(len(keys))
    return (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["video_id", "frame", "caption"])
    )


def match_frame_truth(frames_index: pd.DataFrame, truth: pd.DataFrame) -> pd.Series:
    """Ground-truth still caption of each frame row: the truth row of the same video nearest in time."""
    missing = sorted(set(frames_index.video_id) - set(truth.video_id))
    if missing:
        raise CaptionsError(
            f"{len(missing)} videos have no rows in frame_truth.parquet (first: {missing[0]!r}); "
            "frames and shapes world out of date? rerun the shapes and frames stages"
        )
    left = frames_index[["video_id", "timestamp"]].astype({"timestamp": "float64"}).reset_index()
    right = truth[["video_id", "time", "caption"]].astype({"time": "float64"})
    merged = pd.merge_asof(
        left.sort_values("timestamp"),
        right.sort_values("time"),
        left_on="timestamp",
        right_on="time",
        by="video_id",
        direction="nearest",
    )
    return merged.set_index("index")["caption"].sort_index().rename("truth").reset_index(drop=True)


def check_one_caption_per_frame(frames_index: pd.DataFrame, captions: pd.DataFrame) -> None:
    """Exactly one caption row per frame row, same keys, no missing caption."""
    keys = ["video_id", "frame"]
    if len(captions) != len(frames_index):
        raise CaptionsError(f"{len(captions)} caption rows for {len(frames_index)} frame rows")
    if captions.duplicated(keys).any():
        raise CaptionsError("duplicate (video_id, frame) rows in the captions")
    a = frames_index[keys].astype({"frame": "int64"})
    b = captions[keys].astype({"frame": "int64"})
    joined = a.merge(b, on=keys, how="left", indicator=True)
    if (joined["_merge"] != "both").any():
        first = joined[joined["_merge"] != "both"].iloc[0]
        raise CaptionsError(f"frame ({first.video_id!r}, {first.frame}) has no caption")
    if captions["caption"].isna().any():
        raise CaptionsError("a frame has no caption (null)")


def captions_table(captions: pd.DataFrame) -> pa.Table:
    df = captions[["video_id", "frame", "caption"]].astype(
        {"video_id": str, "frame": "int32", "caption": str}
    )
    return pa.Table.from_pandas(df, schema=CAPTIONS_SCHEMA, preserve_index=False)


def write_captions(path: str | Path, captions: pd.DataFrame) -> None:
    write_parquet(path, captions_table(captions))


def make_captions(
    model: str,
    frames_dir: str | Path,
    *,
    batch_size: int = 128,
    max_new_tokens: int = 24,
    num_beams: int = 1,
    dataset: str = "shapes",
    root: str | Path = "data/shapes",
    device: str | torch.device = "auto",
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Caption every frame row of ``frames_dir``; returns the captions and the stage metrics.

    ``model``: hub id or local directory (BLIP), ``oracle`` (shapes world: the ground-truth still caption of
    the nearest source frame), or a ``.json`` file of published pseudo captions
    (:func:`import_pseudo_captions`).
    On the shapes world the metrics include agreement with ``<root>/frame_truth.parquet``.
    """
    start = time.perf_counter()
    index = read_frames_index(frames_dir)
    truth = None
    if dataset == "shapes":
        truth_path = Path(root) / "frame_truth.parquet"
        if not truth_path.exists():
            raise CaptionsError(f"{truth_path} not found (run the shapes stage)")
        truth = match_frame_truth(index, pd.read_parquet(truth_path))
    device_type, unfinished, caption_seconds = "cpu", 0, 0.0
    if model == ORACLE:
        if truth is None:
            raise CaptionsError(
                f"captioner.model: oracle needs the shapes world (data.dataset is {dataset!r})"
            )
        captions = index[["video_id", "frame"]].assign(caption=truth.map(normalize_caption).to_numpy())
    elif model.endswith(".json") and not Path(model).is_dir():
        if not Path(model).is_file():
            raise CaptionsError(f"captioner.model: pseudo-caption file {model!r} not found")
        captions = import_pseudo_captions(model, index)
    else:
        captioner = load_captioner(model, device)
        device_type = captioner.device.type
        caption_start = time.perf_counter()
        captions = caption_frames(captioner, frames_dir, batch_size, max_new_tokens, num_beams)
        caption_seconds, unfinished = time.perf_counter() - caption_start, captioner.unfinished
    check_one_caption_per_frame(index, captions)
    captions = index[["video_id", "frame"]].merge(captions, on=["video_id", "frame"], how="left")
    seconds = time.perf_counter() - start
    metrics: dict[str, Any] = {
        "captioner": model,
        "device": device_type,
        "frames": len(captions),
        "videos": int(captions.video_id.nunique()),
        "empty_captions": int((captions.caption.str.strip() == "").sum()),
        "unfinished_captions": unfinished,  # cut at max_new_tokens: raise captioner.max_new_tokens
        "distinct_captions": int(captions.caption.nunique()),
        "seconds": round(seconds, 2),  # everything: reading frames, loading the model, captioning
        "captions_per_s": round(len(captions) / max(caption_seconds or seconds, 1e-9), 1),  # generation only
    }
    if truth is not None:
        metrics["agreement"] = caption_agreement(captions.caption.tolist(), truth.tolist())
    return captions, metrics


# --------------------------------------------------------------------------------------------------------
# Import / export (the DiscoVLA release form)


def export_pseudo_captions(captions: pd.DataFrame, path: str | Path) -> None:
    """Write ``{"<video_id>": [caption of frame 0, frame 1, ...]}`` (videos in first-appearance order)."""
    if captions.duplicated(["video_id", "frame"]).any():
        raise CaptionsError("duplicate (video_id, frame) rows: one caption per frame expected")
    out: dict[str, list[str]] = {}
    for vid, group in captions.groupby("video_id", sort=False):
        out[str(vid)] = group.sort_values("frame").caption.astype(str).tolist()
    write_json(path, out)


def _suffix_key(suffix: str) -> tuple[int, int | str]:
    return (0, int(suffix)) if suffix.isdigit() else (1, suffix)


def _group_pseudo_captions(raw: dict[str, Any], known: set[str]) -> tuple[dict[str, list[str]], int]:
    """Map JSON keys to known video ids (``<id>`` or ``<id>_<suffix>``); values: caption(s)."""
    exact: dict[str, list[str]] = {}
    suffixed: dict[str, list[tuple[tuple[int, int | str], list[str]]]] = {}
    ignored = 0
    for key, value in raw.items():
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(c, str) for c in items):
            raise CaptionsError(f"pseudo captions {key!r}: expected a caption or a list of captions")
        head, _, suffix = key.rpartition("_")
        if key in known:
            exact[key] = items
        elif head in known:
            suffixed.setdefault(head, []).append((_suffix_key(suffix), items))
        else:
            ignored += 1
    both = sorted(set(exact) & set(suffixed))
    if both:
        raise CaptionsError(
            f"pseudo captions for {both[0]!r} given both as {both[0]!r} and as {both[0]!r}_<n>"
        )
    for vid, parts in suffixed.items():
        exact[vid] = [c for _, items in sorted(parts, key=lambda p: p[0]) for c in items]
    return exact, ignored


def resample_uniform(items: Sequence[str], n: int) -> list[str]:
    """``n`` items picked at the centres of ``n`` equal bins over ``items`` (repeats when too few)."""
    m = len(items)
    return [items[min(m - 1, int((i + 0.5) * m / n))] for i in range(n)]


def import_pseudo_captions(path: str | Path, frames: pd.DataFrame, resample: bool = True) -> pd.DataFrame:
    """Read a pseudo-caption JSON and give every frame row of ``frames`` (video_id, frame) one caption.

    Keys are ``<video_id>`` (value: the list of per-frame captions in frame order) or ``<video_id>_<suffix>``
    (suffix stripped after the last underscore only when the rest is a known video id; parts ordered by
    numeric suffix and concatenated). A video whose list length differs from its number of frames F gets
    the list resampled uniformly to F (``resample=False``: an error). Keys of unknown videos are ignored;
    a frames video without captions is an error. Counts are in ``result.attrs["import"]``.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CaptionsError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(raw, dict):
        raise CaptionsError(f"{path}: expected a JSON object keyed by video id")
    grouped, ignored = _group_pseudo_captions(raw, set(frames.video_id.astype(str)))
    rows, resampled = [], 0
    ordered = frames[["video_id", "frame"]].astype({"video_id": str}).sort_values(["video_id", "frame"])
    for vid, g in ordered.groupby("video_id", sort=False):
        items = grouped.get(vid)
        if not items:
            raise CaptionsError(f"{path}: no pseudo captions for video {vid!r}")
        if len(items) != len(g):
            if not resample:
                raise CaptionsError(f"{path}: video {vid!r} has {len(items)} captions for {len(g)} frames")
            items, resampled = resample_uniform(items, len(g)), resampled + 1
        rows.append(g.assign(caption=[normalize_caption(c) for c in items]))
    out = (
        frames[["video_id", "frame"]]
        .astype({"video_id": str})
        .merge(pd.concat(rows), on=["video_id", "frame"], how="left")
    )
    out["frame"] = out["frame"].astype("int32")
    out.attrs["import"] = {"videos": len(rows), "resampled_videos": resampled, "ignored_keys": ignored}
    return out
