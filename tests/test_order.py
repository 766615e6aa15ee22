"""Frame order: the faithful model is order-blind by construction, the order-aware extension starts as the
paper's model, the reversal test and the reversed-negatives loss on hand-computed cases."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_model import TINY, make_clip, make_tokens, randomise_trainable

from discovla.losses import discovla_loss, order_loss
from discovla.model import DiscoVLA, DiscoVLAConfig
from discovla.order import order_copies, order_perms
from discovla.retrieval import reversal_accuracy
from discovla.text import states_order

CFG = DiscoVLAConfig(lora_rank=4, fusion=True, vision_layers=2, text_layers=1, adapter_dim=4, num_frames=4)
ORDER = replace(CFG, temporal_module=True, temporal_width=32)


def _model(cfg: DiscoVLAConfig, seed: int = 7) -> DiscoVLA:
    torch.manual_seed(seed)
    return DiscoVLA(make_clip(TINY), cfg).eval()


def _pixels(b: int = 3, f: int = 4, seed: int = 5) -> torch.Tensor:
    return torch.randn(b, f, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_faithful_model_is_order_blind():
    model = _model(CFG)
    randomise_trainable(model)  # trained-looking LoRA and IVFusion adapters, not the zero start
    assert model.order_blind
    px = _pixels()
    feats = model.encode_frames(px)
    rev = model.encode_frames(px.flip(1))
    assert torch.allclose(rev, feats.flip(1), atol=1e-5)  # the encoder is equivariant to frame order
    gap = (model.video_embedding(rev) - model.video_embedding(feats)).abs().max()
    assert gap < 1e-5, f"reversal moved the faithful video embedding by {gap}"


@torch.no_grad()
def test_frame_positions_make_the_model_order_aware():
    model = _model(ORDER)
    randomise_trainable(model)
    assert not model.order_blind
    px = _pixels()
    gap = model.video_embedding(model.encode_frames(px.flip(1))) - model.video_embedding(
        model.encode_frames(px)
    )
    assert gap.abs().max() > 1e-4  # far above the order-blind model's float noise (< 1e-6)


def test_temporal_module_at_init_is_discovla_exactly():
    px, tokens = _pixels(), make_tokens(3, 16, 100)
    pseudo = make_tokens(12, 16, 100, seed=2).view(3, 4, 16)
    paper, order = _model(CFG), _model(ORDER)
    assert paper.num_trainable() < order.num_trainable()  # the module's weights are there, and train
    for name, p in paper.named_parameters():  # built last: the paper's modules draw the same initial weights
        assert torch.equal(p, dict(order.named_parameters())[name]), name
    with torch.no_grad():
        fa, fb = paper.encode_frames(px), order.encode_frames(px)
        assert torch.equal(paper.video_embedding(fa), order.video_embedding(fb))
    la = discovla_loss(paper.encode_text(tokens), fa, paper.encode_pseudo(pseudo), 100.0)
    t, p = order.encode_text(tokens), order.encode_pseudo(pseudo)
    lb = discovla_loss(t, fb, p, 100.0, video=order.video_embedding(fb))
    assert torch.equal(la["loss"], lb["loss"])
    # the zero-initialised output layer gets a gradient: a step moves the model off the paper's
    copies = order_copies(order, px, fb, order_perms_for(4), _dist())
    video = order.video_embedding(fb)
    loss = discovla_loss(t, fb, p, 100.0, video=video, order_copies=copies, order_weight=1.0)["loss"]
    loss.backward()
    assert order.temporal.up.weight.grad.abs().sum() > 0


def order_perms_for(frames: int, shuffled: bool = False, seed: int = 0, step: int = 0) -> list[torch.Tensor]:

    return order_perms(seed, shuffled, step, frames)


def _dist():
    from discovla.distributed import Dist

    return Dist(rank=0, world=1, local_rank=0)


def test_order_perms_reverse_then_a_true_shuffle_drawn_from_the_step():
    (rev,) = order_perms_for(5)
    assert rev.tolist() == [4, 3, 2, 1, 0]
    seen = set()
    for step in range(30):
        a = order_perms_for(5, shuffled=True, step=step)
        b = order_perms_for(5, shuffled=True, step=step)
        assert torch.equal(a[1], b[1])  # a resumed run draws the same shuffle
        assert a[1].tolist() not in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0])
        assert sorted(a[1].tolist()) == [0, 1, 2, 3, 4]
        seen.add(tuple(a[1].tolist()))
    assert len(seen) > 5
    with pytest.raises(ValueError, match="at least 3 frames"):
        order_perms_for(2, shuffled=True)


@torch.no_grad()
def test_order_copies_equal_encoding_the_reversed_video():
    model = _model(ORDER)
    randomise_trainable(model)
    px = _pixels()
    feats = model.encode_frames(px)
    perms = order_perms_for(4, shuffled=True, step=3)
    copies = order_copies(model, px, feats, perms, _dist())
    assert copies.shape == (3, 2, 32)
    for k, perm in enumerate(perms):
        want = model.video_embedding(model.encode_frames(px[:, perm]))
        assert torch.allclose(copies[:, k], want, atol=1e-5)
    # with frame positions in the video-level attention the copies are encoded again
    tpos = _model(replace(ORDER, temporal_position=True))
    randomise_trainable(tpos)
    feats = tpos.encode_frames(px)
    copies = order_copies(tpos, px, feats, perms[:1], _dist())
    want = tpos.video_embedding(tpos.encode_frames(px.flip(1)))
    assert torch.allclose(copies[:, 0], want, atol=1e-6)
    assert not torch.allclose(want, tpos.video_embedding(feats.flip(1)), atol=1e-4)


def test_order_loss_hand_case():
    # two captions; caption 0: own video cos 0.8, reversed 0.6; caption 1: own 0.0, reversed 1.0 (E = 2)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[0.8, 0.6], [1.0, 0.0]])
    c = torch.tensor([[[0.6, 0.8]], [[0.0, 1.0]]])
    tau = 10.0
    want = (-math.log(math.exp(8) / (math.exp(8) + math.exp(6))) - math.log(1 / (1 + math.exp(10)))) / 2
    assert order_loss(t, v, c, tau).item() == pytest.approx(want, rel=1e-6)
    # in the objective: weighted and added, L_video untouched
    frames = v[:, None, :].expand(2, 3, 2)  # the video embedding of identical frames is that frame
    base = discovla_loss(t, frames, None, tau, alpha=0.0, beta=0.0)
    with_order = discovla_loss(t, frames, None, tau, alpha=0.0, beta=0.0, order_copies=c, order_weight=0.5)
    assert with_order["video"].item() == pytest.approx(base["video"].item())
    assert with_order["order"].item() == pytest.approx(want, rel=1e-6)
    assert with_order["loss"].item() == pytest.approx(base["loss"].item() + 0.5 * want, rel=1e-6)
    assert "order" not in base


def test_reversal_accuracy_known_answers():
    e = torch.eye(3)
    text = e[[0, 1, 2, 0]]  # caption 3 is a second caption of video 0
    video = torch.tensor([[1.0, 0, 0], [0, 0.5, 0], [0, 0, 1]])
    rev = torch.tensor([[0.5, 0, 0], [0, 1.0, 0], [0, 0, 1 + 1e-7]])
    target = np.array([0, 1, 2, 0])
    # caption 0 wins, 1 loses, 2 ties (within float noise), 3 wins: (1 + 0 + 0.5 + 1) / 4
    assert reversal_accuracy(text, video, rev, target) == pytest.approx(62.5)
    assert reversal_accuracy(text[:2], video, rev, target[:2]) == pytest.approx(50.0)
    assert reversal_accuracy(text, video, video, target) == pytest.approx(50.0)  # order-blind: chance
    with pytest.raises(ValueError, match="targets"):
        reversal_accuracy(text, video, rev, target[:2])


def test_reversal_test_splits_ordered_captions():
    from discovla.evaluate import reversal_test

    text = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    rev = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    caps = [
        "a circle rises, then a square appears",
        "a circle rises",
        "a square sinks after a circle turns red",
    ]
    out = reversal_test(text, video, rev, np.array([0, 0, 1]), caps)
    assert out == {"all": pytest.approx(100 * 2.5 / 3), "ordered": 75.0, "captions": 3, "ordered_captions": 2}


def test_states_order_words():
    assert states_order("A red circle appears, then a blue square vanishes")
    assert states_order("a square turns green, after which the circle rises")
    assert states_order("first a dog barks")
    assert not states_order("a red circle slides to the left while a square stays put")
    assert not states_order("the athens marathon")  # words, not substrings ("then" inside "athens")


TREND = replace(CFG, temporal_trends=1)


def test_trend_basis_is_orthonormal_beside_the_mean_with_parity():
    from discovla.model.temporal import trend_basis

    p = trend_basis(8, 3)
    assert p.shape == (3, 8)
    assert torch.allclose(p @ p.t(), torch.eye(3), atol=1e-6)  # orthonormal
    assert torch.allclose(p.sum(dim=1), torch.zeros(3), atol=1e-6)  # orthogonal to the mean
    assert torch.allclose(p.flip(1), p * torch.tensor([[-1.0], [1.0], [-1.0]]), atol=1e-6)  # (-1)^k
    assert torch.all(torch.diff(p[0]) > 0)  # the slope rises with time
    with pytest.raises(ValueError, match="1..F-1"):
        trend_basis(4, 4)


@torch.no_grad()
def test_trend_pooling_flips_the_slope_under_reversal():
    from discovla.model.temporal import TrendPooling

    pool = TrendPooling(6, 4, trends=1)
    x = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pool(x), F.normalize(F.normalize(x, dim=-1).mean(dim=1), dim=-1))  # zero start
    pool.maps.normal_(generator=torch.Generator().manual_seed(1))
    n = F.normalize(x, dim=-1)
    slope = torch.einsum("f,bfe->be", pool.basis[0], n) @ pool.maps[0].t()
    assert torch.allclose(pool(x), F.normalize(n.mean(dim=1) + slope, dim=-1), atol=1e-6)
    assert torch.allclose(pool(x.flip(1)), F.normalize(n.mean(dim=1) - slope, dim=-1), atol=1e-6)


def test_trend_pooling_at_init_is_discovla_exactly_and_learns_from_l_order():
    px, tokens = _pixels(), make_tokens(3, 16, 100)
    pseudo = make_tokens(12, 16, 100, seed=2).view(3, 4, 16)
    paper, trend = _model(CFG), _model(TREND)
    assert not trend.order_blind and paper.order_blind
    for name, p in paper.named_parameters():
        assert torch.equal(p, dict(trend.named_parameters())[name]), name
    fa, fb = paper.encode_frames(px), trend.encode_frames(px)
    assert torch.equal(paper.video_embedding(fa), trend.video_embedding(fb))
    t, p = trend.encode_text(tokens), trend.encode_pseudo(pseudo)
    la = discovla_loss(paper.encode_text(tokens), fa, paper.encode_pseudo(pseudo), 100.0)
    lb = discovla_loss(t, fb, p, 100.0, video=trend.video_embedding(fb))
    assert torch.equal(la["loss"], lb["loss"])
    copies = order_copies(trend, px, fb, order_perms_for(4), _dist())
    # at zero maps a reversal changes nothing (up to the order of the mean's float sum)
    assert torch.allclose(copies[:, 0], trend.video_embedding(fb), atol=1e-6)
    loss = discovla_loss(
        t, fb, p, 100.0, video=trend.video_embedding(fb), order_copies=copies, order_weight=1.0
    )
    loss["loss"].backward()
    assert trend.trends.maps.grad.abs().sum() > 0  # the zero maps get a gradient: L_order can move them
