"""Pixels: the project's one image codec (PNG) and CLIP's mean/std normalisation.

Every image the pipeline stores (frames shards, the shapes world's stills) is PNG at a fixed compression
level, so the same pixels always give the same bytes. Decoding returns uint8 ``[H, W, 3]`` RGB arrays;
callers that need PIL (the BLIP processor, bicubic resizing) wrap the array with ``Image.fromarray``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

PNG_LEVEL = 6


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of one uint8 ``[H, W, 3]`` RGB image (fixed compression level: deterministic bytes)."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB array from PNG bytes (any PNG mode is converted to RGB)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` resized to ``size x size`` with PIL bicubic (unchanged when it already is)."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def normalise(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> float32, ``(x / 255 - mean) / std`` per channel, on ``pixels``' device."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    return (pixels.float() / 255.0 - m) / s
