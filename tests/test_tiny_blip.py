"""The tiny captioner: vocabulary, training, save/load, captioning arrays and PIL images, caption scoring."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from discovla.captioner import load_captioner
from discovla.data.shapes import caption_agreement, sample_still, still_caption
from discovla.text import CaptionsError, normalize_caption
from discovla.tiny_blip import (
    BOS_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    TinyBlipSpec,
    build_processor,
    build_vocab,
    pretrain_tiny_captioner,
)

TEST_SPEC = TinyBlipSpec(
    image_size=32,
    patch_size=8,
    vision_hidden=32,
    vision_layers=1,
    text_hidden=32,
    text_layers=1,
    heads=2,
    mlp_ratio=2,
    max_positions=32,
)


def render_stills(n: int, size: int = 32, seed: int = 0) -> tuple[list[Image.Image], list[str]]:
    images, captions = [], []
    for i in range(n):
        img, objs = sample_still(np.random.default_rng([seed, i]), size)
        images.append(Image.fromarray(img))
        captions.append(still_caption(objs))
    return images, captions


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    images, captions = render_stills(24)
    out = tmp_path_factory.mktemp("blip") / "tiny-blip"
    captioner, stats = pretrain_tiny_captioner(
        images, captions, out, seed=0, epochs=10, batch_size=8, lr=3e-3, spec=TEST_SPEC, device="cpu"
    )
    return captioner, stats, out, images, captions


def test_vocab_and_tokenizer_round_trip(tmp_path) -> None:
    _, captions = render_stills(12)
    vocab = build_vocab(captions)
    assert vocab[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    assert "," in vocab and len(set(vocab)) == len(vocab)
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = build_processor(tmp_path / "vocab.txt", 32).tokenizer
    assert (tok.bos_token_id, tok.sep_token_id, tok.pad_token_id) == (BOS_ID, SEP_ID, 0)
    ids = tok(captions[0])["input_ids"]
    assert tok.unk_token_id not in ids and ids[-1] == SEP_ID
    assert normalize_caption(tok.decode(ids, skip_special_tokens=True)) == captions[0]
    with pytest.raises(CaptionsError):
        build_vocab([])


def test_training_lowers_loss_and_saves_a_loadable_model(tiny) -> None:
    captioner, stats, out, images, _ = tiny
    assert stats["steps"] == 30 and stats["final_loss"] < 0.8 * stats["first_loss"]
    for name in ("config.json", "model.safetensors", "processor_config.json", "vocab.txt"):
        assert (out / name).is_file(), name
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # atomic: no temporaries left
    cfg = captioner.model.config.text_config
    assert (cfg.bos_token_id, cfg.sep_token_id, cfg.pad_token_id) == (BOS_ID, SEP_ID, 0)
    reloaded = load_captioner(str(out), "cpu")
    expected = captioner.caption(images[:6], batch_size=4, max_new_tokens=31, progress=False)
    assert reloaded.caption(images[:6], batch_size=3, max_new_tokens=31, progress=False) == expected
    assert all(c == normalize_caption(c) for c in expected)


def test_caption_accepts_uint8_arrays_and_rejects_bad_input(tiny) -> None:
    captioner, _, _, images, _ = tiny
    array = np.stack([np.asarray(im) for im in images[:5]])
    from_pil = captioner.caption(images[:5], batch_size=2, max_new_tokens=8, progress=False)
    assert captioner.caption(array, batch_size=5, max_new_tokens=8, progress=False) == from_pil
    before = captioner.unfinished
    one_token = captioner.caption(array, batch_size=5, max_new_tokens=1, progress=False)
    assert all(len(c.split()) <= 1 for c in one_token)
    assert captioner.unfinished - before == sum(c != "" for c in one_token)  # cut before the end token
    with pytest.raises(CaptionsError):
        captioner.caption(array.astype(np.float32), progress=False)
    with pytest.raises(CaptionsError):
        captioner.caption(array[..., :2], progress=False)


def test_caption_agreement_counts_attribute_sets() -> None:
    truth = ["a small red circle at the top left and a large blue square on the right"] * 2
    predicted = [
        "a small blue circle at the top left and a large red square on the right",  # same colour set
        "a small red circle at the top left",
    ]
    scores = caption_agreement(predicted, truth)
    assert scores["exact_match"] == 0.0
    assert scores["colours"] == 0.5 and scores["shapes"] == 0.5 and scores["positions"] == 0.5
    assert scores["sizes"] == 0.5
    assert caption_agreement(truth, truth)["exact_match"] == 1.0
    with pytest.raises(CaptionsError):
        caption_agreement(predicted, truth[:1])
