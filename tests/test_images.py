"""The one image codec and the one pixel normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from discovla.batching import batches
from discovla.images import decode_png, encode_png, normalise, resize


def test_png_round_trip_is_exact_and_deterministic() -> None:
    img = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    data = encode_png(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and encode_png(img) == data
    out = decode_png(data)
    assert out.dtype == np.uint8 and out.shape == (12, 20, 3) and np.array_equal(out, img)


def test_decode_converts_other_modes_to_rgb(tmp_path) -> None:
    grey = Image.fromarray(np.full((4, 4), 77, np.uint8), "L")
    grey.save(tmp_path / "g.png")
    out = decode_png((tmp_path / "g.png").read_bytes())
    assert out.shape == (4, 4, 3) and (out == 77).all()


def test_resize_is_pil_bicubic_and_a_no_op_at_size() -> None:
    img = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert resize(img, 64) is img
    want = np.asarray(Image.fromarray(img).resize((32, 32), Image.Resampling.BICUBIC))
    assert np.array_equal(resize(img, 32), want)


def test_normalise_per_channel() -> None:
    px = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = normalise(px, mean=(0.0, 0.5, 0.2), std=(1.0, 0.5, 0.1))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)


def test_batches_cover_the_range_once() -> None:
    assert [(s.start, s.stop) for s in batches(7, 3)] == [(0, 3), (3, 6), (6, 7)]
    assert list(batches(0, 4)) == []
    with pytest.raises(ValueError, match="batch_size"):
        list(batches(3, 0))
