"""The BLIP captioner: ``transformers`` ``BlipForConditionalGeneration`` + ``BlipProcessor`` on one device.

:func:`load_captioner` loads it from a hub id (``Salesforce/blip-image-captioning-base`` / ``-large``) or a
local ``save_pretrained`` directory (such as the tiny captioner of :mod:`discovla.tiny_blip`) and, when it
cannot, says in one message what to download or build. :meth:`Captioner.caption` turns images (uint8
``[N, H, W, 3]`` arrays or PIL images) into lower-case, single-spaced captions, batched, without gradients,
in the model's precision (``dtype``: float32 by default, ``torch.bfloat16`` on a GPU for speed).

Captioning a frames store (the ``captions`` stage) is :mod:`discovla.captioning`; this module knows no
artifact and no dataset.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from discovla.batching import batches
from discovla.errors import DiscoVLAError
from discovla.runtime import hub_offline, resolve_device
from discovla.text import CaptionsError, normalize_caption

ORACLE = "oracle"  # the captions stage's ground-truth captions (discovla.captioning), not a model
BLIP_BASE = "Salesforce/blip-image-captioning-base"

ImageBatch = Sequence[Image.Image] | np.ndarray


class CaptionerUnavailable(DiscoVLAError, RuntimeError):
    """The captioner cannot be loaded (offline hub id, missing directory); the message says what to do."""


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
    """A BLIP captioning model with its processor, on one device (``dtype``: cast the model, else as is)."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        device: str | torch.device = "auto",
        name: str = "",
        dtype: torch.dtype | None = None,
    ) -> None:
        self.device = resolve_device(device)
        model = model.to(self.device) if dtype is None else model.to(self.device, dtype)
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.unfinished = 0  # captions cut at max_new_tokens before the end token, since construction
        self.generated_tokens = 0  # decoder positions generated (rows x new tokens), since construction

    @property
    def max_new_tokens_limit(self) -> int:
        """Longest caption the text decoder's position embeddings allow after the bos token."""
        return int(self.model.config.text_config.max_position_embeddings) - 1

    @torch.no_grad()
    def _caption_batch(
        self, images: list[Image.Image], max_new_tokens: int, num_beams: int, min_new_tokens: int = 0
    ) -> list[str]:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, dtype=self.model.dtype)
        limit = min(max_new_tokens, self.max_new_tokens_limit)
        extra = {"min_new_tokens": min(min_new_tokens, limit)} if min_new_tokens > 0 else {}
        ids = self.model.generate(
            pixel_values=pixels, max_new_tokens=limit, num_beams=num_beams, do_sample=False, **extra
        )
        self.generated_tokens += ids[:, 1:].numel()
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
        min_new_tokens: int = 0,
    ) -> list[str]:
        """One caption per image (special tokens stripped, lower-case, single-spaced; may be empty).

        ``min_new_tokens``: suppress the end token until that many tokens (benchmarks: a fixed length).
        """
        if batch_size < 1 or max_new_tokens < 1 or num_beams < 1:
            raise CaptionsError("batch_size, max_new_tokens and num_beams must be >= 1")
        if min_new_tokens < 0:
            raise CaptionsError("min_new_tokens must be >= 0")
        captions: list[str] = []
        with tqdm(total=len(images), desc="captioning", unit="img", disable=not progress) as bar:
            for rows in batches(len(images), batch_size):
                chunk = _to_pil_list(images[rows])
                captions.extend(self._caption_batch(chunk, max_new_tokens, num_beams, min_new_tokens))
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


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Quick TCP probe of the hub endpoint: without network, fail at once rather than after retries."""
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _from_pretrained(source: str, local_files_only: bool, weights: bool = True) -> tuple[Any, Any]:
    """The processor and the model (``weights=False``: its config only, nothing else is read)."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

    processor = BlipProcessor.from_pretrained(source, local_files_only=local_files_only)
    if not weights:
        return processor, BlipConfig.from_pretrained(source, local_files_only=local_files_only)
    net = BlipForConditionalGeneration.from_pretrained(source, local_files_only=local_files_only)
    return processor, net


def load_captioner(
    model: str, device: str | torch.device = "auto", dtype: torch.dtype | None = None
) -> Captioner:
    """Load a BLIP captioner from a hub id or a local ``save_pretrained`` directory (``dtype``: cast it).

    Raises :class:`CaptionerUnavailable` with one message saying what to download or build.
    """
    processor, net = _resolve(model, weights=True)
    return Captioner(net, processor, device, name=model, dtype=dtype)


def check_captioner(model: str) -> None:
    """Raise :class:`CaptionerUnavailable` (the message :func:`load_captioner` would give) unless ``model``
    has a BLIP processor and config where the captioner would be loaded from; no weights are read (a Ray
    driver checks before its actors load the model)."""
    _resolve(model, weights=False)


def _resolve(model: str, weights: bool) -> tuple[Any, Any]:
    """Processor and model (or config, ``weights=False``) of ``model``, from a local directory, the Hugging
    Face cache, or the hub when it is reachable."""
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
            processor, net = _from_pretrained(str(path), local_files_only=True, weights=weights)
        except (OSError, ValueError, KeyError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CaptionerUnavailable(
                f"captioner.model: {model!r} is not a BLIP captioner saved with save_pretrained "
                f"(model + processor): {reason}"
            ) from exc
        return processor, net
    try:  # the Hugging Face cache first: no network needed
        processor, net = _from_pretrained(model, local_files_only=True, weights=weights)
    except (OSError, ValueError, KeyError):
        if hub_offline() or not _hub_reachable():
            raise CaptionerUnavailable(_hub_hint(model)) from None
        try:
            processor, net = _from_pretrained(model, local_files_only=False, weights=weights)
        except (OSError, ValueError, KeyError) as exc:
            raise CaptionerUnavailable(
                f"captioner.model: cannot load {model!r} from the Hugging Face Hub ({exc}); give a BLIP "
                "captioning repo id (Salesforce/blip-image-captioning-base) or a local directory"
            ) from exc
    return processor, net
