"""Batches from the feature cache through ``torch.utils.data``: worker processes, pinned memory, prefetch.

The cache's pixels stay on disk (:class:`discovla.artifacts.features.VideoPixels`); each batch is read
(and, for training, augmented) by a loader worker while the model works on the previous one. A batch's
content is a pure function of its position: :class:`TrainBatches` step ``i`` is this rank's slice of the
epoch plan's global batch ``i`` (the plan comes from ``(seed, epoch)``, RandAugment draws from ``(seed,
epoch, sample position)``), so any number of workers, and a resumed run, see exactly the same batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from discovla.augment import augment_batch
from discovla.batching import batches


class TrainBatches(Dataset):
    """Step ``i`` of an epoch: ``{"pixels": uint8 [b, F, 3, S, S], "tokens": [b, L], "pseudo": [b, F, L]}``
    for this rank's ``b = batch_size / world`` samples of global batch ``i`` of the plan (``order``: video
    index, ``chosen``: caption row, per sample). ``pseudo`` is left out when not needed."""

    def __init__(
        self,
        pixels: Any,
        cap_tokens: torch.Tensor,
        pseudo_tokens: torch.Tensor | None,
        order: np.ndarray,
        chosen: np.ndarray,
        batch_size: int,
        augment: str = "none",
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} must be divisible by the world size {world}")
        self.pixels, self.cap_tokens, self.pseudo_tokens = pixels, cap_tokens, pseudo_tokens
        self.order, self.chosen = order, chosen
        self.batch_size, self.local, self.rank = batch_size, batch_size // world, rank
        self.augment, self.seed, self.epoch = augment, seed, epoch

    def __len__(self) -> int:
        return len(self.order) // self.batch_size

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        if not 0 <= step < len(self):
            raise IndexError(step)
        lo = step * self.batch_size + self.rank * self.local
        vids = torch.from_numpy(self.order[lo : lo + self.local])
        caps = torch.from_numpy(self.chosen[lo : lo + self.local])
        raw = self.pixels[vids]
        out = {
            "pixels": augment_batch(raw, self.augment, self.seed, self.epoch, range(lo, lo + self.local)),
            "tokens": self.cap_tokens[caps],
        }
        if self.pseudo_tokens is not None:
            out["pseudo"] = self.pseudo_tokens[vids]
        return out


class VideoBatches(Dataset):
    """Consecutive batches of the given videos' pixels (evaluation, indexing): item ``i`` is
    uint8 ``[b, F, 3, S, S]`` for ``videos[i * per_batch : (i + 1) * per_batch]``."""

    def __init__(self, pixels: Any, videos: np.ndarray, per_batch: int) -> None:
        self.pixels, self.videos = pixels, np.asarray(videos, dtype=np.int64)
        self.slices = list(batches(len(self.videos), per_batch))

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.pixels[self.videos[self.slices[i]]]


def make_loader(
    dataset: Dataset, workers: int = 0, pin_memory: bool = False, prefetch: int = 2
) -> DataLoader:
    """A loader over ``dataset``'s items in order (each item is already a batch). ``workers == 0`` reads in
    the calling process; otherwise ``workers`` processes keep ``prefetch`` batches each in flight."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch if workers else None,
        persistent_workers=False,
    )
