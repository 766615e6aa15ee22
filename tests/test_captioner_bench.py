"""The captioner benchmark (benchmarks/captioner.py) and the random BLIP it measures: a small BlipConfig run
end to end on the CPU, BLIP-base's shapes built once, the results file merged by run. No network."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from discovla.text import CaptionsError

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_captioner", ROOT / "benchmarks" / "captioner.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
blip_vocab, random_blip = bench.blip_vocab, bench.random_blip


def small_config():
    from transformers import BlipConfig

    text = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=32,
        bos_token_id=120,
        sep_token_id=102,
        pad_token_id=0,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=32)


def test_measure_small_config_on_cpu() -> None:
    result = bench.measure("cpu", frames=7, batch=3, dtype="fp32", max_new_tokens=5, config=small_config())
    assert result["captions"] == 7 and result["batches"] == 3
    assert result["new_tokens_per_caption"] == 5  # forced: every caption is 5 generated tokens
    assert result["unfinished_captions"] == 7  # the end token was suppressed for all of them
    assert result["captions_per_s"] > 0 and result["s_per_batch_median"] > 0
    assert result["projected_minutes_msrvtt"] == pytest.approx(
        120_000 / result["captions_per_s"] / 60, rel=0.01
    )
    assert result["dtype"] == "fp32" and result["device_type"] == "cpu"
    assert result["config"]["vision_hidden"] == 32 and result["weights"] == "random BLIP"
    for caption in result["examples"]:  # decoded placeholder words, one per generated non-special token
        assert isinstance(caption, str) and 1 <= len(caption.split()) <= 5
        assert all(w.startswith("w") for w in caption.split())
    json.dumps(result)  # serialisable as is


def test_measure_in_bf16_keeps_the_captions_path() -> None:
    captioner = random_blip(small_config(), "cpu", torch.bfloat16)
    assert captioner.model.dtype == torch.bfloat16
    result = bench.measure_captioner(captioner, frames=2, batch=2, max_new_tokens=3, frame_size=16)
    assert result["captions"] == 2 and result["new_tokens_per_caption"] == 3
    assert bench.describe(captioner)["dtype"] == "bf16"


def test_default_caption_path_is_unchanged() -> None:
    """Without min_new_tokens generation may stop early; the default dtype is the model's own (float32)."""
    captioner = random_blip(small_config(), "cpu")
    assert captioner.model.dtype == torch.float32
    images = np.zeros((2, 20, 20, 3), np.uint8)
    captions = captioner.caption(images, batch_size=2, max_new_tokens=4, progress=False)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    with pytest.raises(CaptionsError):
        captioner.caption(images, min_new_tokens=-1, progress=False)


def test_random_blip_base_has_blip_base_shapes() -> None:
    captioner = random_blip(device="cpu")
    cfg = captioner.model.config
    v, t = cfg.vision_config, cfg.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.image_size, v.patch_size) == (768, 12, 384, 16)
    assert (t.hidden_size, t.num_hidden_layers, t.vocab_size) == (768, 12, 30524)
    assert 220e6 < sum(p.numel() for p in captioner.model.parameters()) < 260e6
    assert captioner.name == "random BLIP-base"
    tok = captioner.processor.tokenizer
    assert len(tok) == 30524 and tok.bos_token_id == t.bos_token_id == 30522
    assert tok.sep_token_id == t.sep_token_id == 102 and tok.pad_token_id == 0
    size = captioner.processor.image_processor.size
    assert (size["height"], size["width"]) == (384, 384)
    pixels = captioner.processor(images=np.zeros((1, 50, 70, 3), np.uint8), return_tensors="pt")
    assert tuple(pixels["pixel_values"].shape) == (1, 3, 384, 384)
    # one tiny caption at full size (about a second on a CPU): the whole path runs
    captions = captioner.caption(np.zeros((1, 64, 64, 3), np.uint8), 1, 2, min_new_tokens=2, progress=False)
    assert len(captions) == 1 and len(captions[0].split()) == 2


def test_blip_vocab_places_special_tokens() -> None:
    from transformers import BlipConfig

    vocab = blip_vocab(BlipConfig().text_config)
    assert len(vocab) == len(set(vocab)) == 30524
    assert (vocab[0], vocab[100], vocab[101], vocab[102], vocab[103]) == (
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    )
    assert (vocab[30522], vocab[30523]) == ("[DEC]", "[ENC]")
    small = blip_vocab(small_config().text_config)
    assert len(small) == len(set(small)) == 128 and small[120] == "[DEC]"


def test_save_runs_merges_by_key(tmp_path) -> None:
    out = tmp_path / "captioner.json"
    run = {
        "device": "cpu x2",
        "dtype": "fp32",
        "batch": 8,
        "weights": "w",
        "max_new_tokens": 20,
        "frame_size": 224,
    }
    bench.save_runs([{**run, "captions_per_s": 1.0}], out)
    bench.save_runs([{**run, "dtype": "bf16", "captions_per_s": 2.0}], out)
    doc = bench.save_runs([{**run, "captions_per_s": 3.0}], out)
    assert [(r["dtype"], r["captions_per_s"]) for r in doc["runs"]] == [("bf16", 2.0), ("fp32", 3.0)]
    assert json.loads(out.read_text()) == doc
    with pytest.raises(ValueError, match="dtype"):
        bench.build_captioner("random", "cpu", "int8", small_config())
