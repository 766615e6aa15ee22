"""Training-time augmentation of cached frames: the reference code's RandAugment, one draw per video.

The authors' code (github LunarShen/DsicoVLA, ``tvr/dataloaders``) augments training frames with timm's
RandAugment policy ``rand-m7-n4-mstd0.5-inc1`` (4 ops, magnitude 7 with noise std 0.5, increasing-severity
op set), built as in SlowFast's ``create_random_augment``: ``translate_const = 0.45 * size``, bicubic
resampling, and the SAME ops and magnitudes for every frame of a video, drawn anew each time a sample is
drawn.

Here the policy runs on the cached uint8 pixels (no video is decoded). timm draws its choices from the
global ``random`` / ``numpy.random`` generators; :func:`randaugment_video` seeds both from
``(seed, epoch, sample)`` before each frame (so all frames of a video get one draw) and restores them
afterwards. The result is a pure function of its arguments, which keeps a resumed run bit-identical.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from timm.data.auto_augment import rand_augment_transform

POLICY = "rand-m7-n4-mstd0.5-inc1"
AUGMENTS = ("none", "randaugment")


@lru_cache(maxsize=8)
def _policy(size: int):  # noqa: ANN202 - timm's RandAugment
    return rand_augment_transform(
        POLICY, {"translate_const": int(size * 0.45), "interpolation": Image.BICUBIC}
    )


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed Python's and NumPy's global generators (what timm draws from), restore them afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        random.seed(seed)
        np.random.seed(seed)
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def sample_seed(seed: int, epoch: int, sample: int) -> int:
    """A 32-bit seed that is a pure function of (run seed, epoch, sample position in the epoch)."""
    return int(np.random.SeedSequence([seed, epoch, sample]).generate_state(1)[0])


def randaugment_video(pixels: torch.Tensor, key: int) -> torch.Tensor:
    """``uint8 [F, 3, S, S]`` -> the same shape, one RandAugment draw (``key``) applied to every frame."""
    if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be uint8 [F, 3, S, S], got {pixels.dtype} {tuple(pixels.shape)}")
    policy = _policy(int(pixels.shape[-1]))
    out = np.empty_like(pixels.numpy())
    for f, frame in enumerate(pixels.permute(0, 2, 3, 1).numpy()):
        with _seeded(key):  # the same draw for every frame of the video
            out[f] = np.asarray(policy(Image.fromarray(frame))).transpose(2, 0, 1)
    return torch.from_numpy(out)


def augment_batch(
    pixels: torch.Tensor, method: str, seed: int, epoch: int, samples: Sequence[int]
) -> torch.Tensor:
    """``uint8 [B, F, 3, S, S]``; ``samples[b]`` is the position of video b in the epoch's sample order."""
    if method == "none":
        return pixels
    if method != "randaugment":
        raise ValueError(f"train.augment must be one of {', '.join(AUGMENTS)}, got {method!r}")
    if len(samples) != pixels.shape[0]:
        raise ValueError(f"{len(samples)} sample positions for a batch of {pixels.shape[0]} videos")
    return torch.stack(
        [randaugment_video(v, sample_seed(seed, epoch, int(s))) for v, s in zip(pixels, samples, strict=True)]
    )
