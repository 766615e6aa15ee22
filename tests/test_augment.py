"""RandAugment on cached frames: one draw per video, a pure function of (seed, epoch, sample)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from discovla.augment import augment_batch, randaugment_video, sample_seed


def _video(frames: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (frames, 3, size, size), dtype=torch.uint8, generator=g)


def test_every_frame_of_a_video_gets_the_same_ops() -> None:
    frame = _video(1)[0]
    video = frame.expand(5, -1, -1, -1).contiguous()  # five identical frames
    changed = 0
    for key in range(20):
        out = randaugment_video(video, key)
        assert out.dtype == torch.uint8 and out.shape == video.shape
        assert all(torch.equal(out[0], out[f]) for f in range(1, 5)), key  # same draw on every frame
        changed += int(not torch.equal(out[0], frame))
    assert changed >= 15  # and the draws really change the frames


def test_draw_is_a_pure_function_of_seed_epoch_and_sample() -> None:
    batch = torch.stack([_video(seed=i) for i in range(3)])
    a = augment_batch(batch, "randaugment", 42, 1, [10, 11, 12])
    b = augment_batch(batch, "randaugment", 42, 1, [10, 11, 12])
    assert torch.equal(a, b)
    other_epoch = augment_batch(batch, "randaugment", 42, 2, [10, 11, 12])
    other_seed = augment_batch(batch, "randaugment", 43, 1, [10, 11, 12])
    assert not torch.equal(a, other_epoch) and not torch.equal(a, other_seed)
    # a sample's draw does not depend on its neighbours in the batch
    alone = augment_batch(batch[1:2], "randaugment", 42, 1, [11])
    assert torch.equal(alone[0], a[1])
    assert sample_seed(42, 1, 11) != sample_seed(42, 1, 12)


def test_global_generators_are_left_as_they_were() -> None:
    random.seed(5)
    np.random.seed(5)
    expected = (random.random(), np.random.rand())
    random.seed(5)
    np.random.seed(5)
    randaugment_video(_video(), 123)
    assert (random.random(), np.random.rand()) == expected


def test_none_is_the_identity_and_bad_input_is_refused() -> None:
    batch = torch.stack([_video(seed=i) for i in range(2)])
    assert augment_batch(batch, "none", 0, 0, [0, 1]) is batch
    with pytest.raises(ValueError, match="train.augment"):
        augment_batch(batch, "autoaugment", 0, 0, [0, 1])
    with pytest.raises(ValueError, match="uint8"):
        randaugment_video(batch[0].float(), 0)
    with pytest.raises(ValueError, match="sample positions"):
        augment_batch(batch, "randaugment", 0, 0, [0])
