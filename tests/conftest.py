"""Shared fixtures: a synthetic feature cache and a random tiny CLIP (no data, no downloads)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


def synthetic_features(
    n_train: int = 16, n_test: int = 6, frames: int = 4, size: int = 32, ctx: int = 32, n_val: int = 0
):
    """A small, valid :class:`discovla.artifacts.features.Features` built from random numbers (train, then
    val, then test videos)."""
    from discovla.artifacts.features import Features

    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)  # the same features whatever ran before
    n = n_train + n_val + n_test
    ids = [f"v{i:03d}" for i in range(n)]
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)
    dim = 64

    def tokens(shape: tuple[int, ...]) -> torch.Tensor:
        t = np.zeros((*shape, ctx), np.int64)
        length = rng.integers(3, 10, size=shape)
        flat_t, flat_l = t.reshape(-1, ctx), length.reshape(-1)
        for row, ln in zip(flat_t, flat_l, strict=True):
            row[0] = 49406
            row[1:ln] = rng.integers(300, 2000, size=ln - 1)
            row[ln] = 49407
        return torch.from_numpy(t)

    caps = []
    for i, v in enumerate(ids):
        for _ in range(2 if split[i] == "train" else 1):
            caps.append({"video_id": v, "split": split[i], "caption": f"caption of {v}", "video_index": i})
    captions = pd.DataFrame(caps)
    captions.insert(0, "caption_id", range(len(captions)))
    emb = torch.nn.functional.normalize(torch.randn(n, frames, dim, generator=gen), dim=-1)
    twins = pd.DataFrame(
        {
            "video_id": [ids[n_train + n_val], ids[n_train + n_val + 1]],
            "twin_id": [ids[n_train + n_val + 1], ids[n_train + n_val]],
            "kind": ["order", "order"],
            "split": ["test", "test"],
        }
    )
    return Features(
        meta={
            "mean": [0.48, 0.45, 0.41],
            "std": [0.27, 0.26, 0.28],
            "logit_scale": 100.0,
            "image_size": size,
            "embed_dim": dim,
        },
        video_ids=ids,
        video_split=split,
        pixels=torch.from_numpy(rng.integers(0, 256, size=(n, frames, 3, size, size), dtype=np.uint8)),
        frame_emb=emb,
        pseudo_tokens=tokens((n, frames)),
        pseudo_emb=emb.clone(),
        captions=captions,
        cap_tokens=tokens((len(captions),)),
        cap_emb=torch.nn.functional.normalize(torch.randn(len(captions), dim, generator=gen), dim=-1),
        twins=twins,
    )


def tiny_train_config():
    """The small training run the training tests share: 2 epochs of batch 8, 4 frames, full DiscoVLA."""
    from discovla.model import DiscoVLAConfig
    from discovla.train import TrainConfig

    return TrainConfig(
        seed=3,
        epochs=2,
        batch_size=8,
        lr=1e-3,
        warmup=0.25,
        device="cpu",
        model=DiscoVLAConfig(
            lora_rank=4, fusion=True, vision_layers=2, text_layers=1, adapter_dim=4, num_frames=4
        ),
    )


@pytest.fixture
def features():
    return synthetic_features()


@pytest.fixture
def tiny_clip_factory():
    from discovla.backbone import load_backbone

    def make():
        torch.manual_seed(0)
        return load_backbone("tiny-clip", None, context_length=32).model

    return make


@pytest.fixture(scope="module")
def tiny_backbone():
    """A randomly initialised, frozen tiny CLIP with a 16-token context."""
    from discovla.backbone import load_backbone

    torch.manual_seed(0)
    return load_backbone("tiny-clip", None, context_length=16)
