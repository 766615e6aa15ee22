"""DiscoVLA losses against hand-computed cases and explicit loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from discovla.losses import (
    align_distill,
    contrastive_loss,
    discovla_loss,
    info_nce,
    pimg_similarity,
    video_embedding,
)


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(
        torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1
    )


def loop_info_nce(sim: torch.Tensor, tau: float) -> float:
    b = sim.shape[0]
    rows = cols = 0.0
    for i in range(b):
        rows += -math.log(math.exp(tau * sim[i, i]) / sum(math.exp(tau * sim[i, j]) for j in range(b)))
        cols += -math.log(math.exp(tau * sim[i, i]) / sum(math.exp(tau * sim[j, i]) for j in range(b)))
    return (rows / b + cols / b) / 2


def loop_pimg(pseudo: torch.Tensor, frames: torch.Tensor, tau: float) -> torch.Tensor:
    out = torch.zeros(pseudo.shape[0], frames.shape[0], dtype=torch.float64)
    for a in range(pseudo.shape[0]):
        for b in range(frames.shape[0]):
            s = [
                [float(pseudo[a, j] @ frames[b, i]) for i in range(frames.shape[1])]
                for j in range(pseudo.shape[1])
            ]
            m = [max(row) for row in s]
            n = [max(s[j][i] for j in range(len(s))) for i in range(len(s[0]))]
            s1 = sum(math.exp(tau * x) * x for x in m) / sum(math.exp(tau * x) for x in m)
            s2 = sum(math.exp(tau * x) * x for x in n) / sum(math.exp(tau * x) for x in n)
            out[a, b] = (s1 + s2) / 2
    return out


def loop_kl_sum(teacher: torch.Tensor, student: torch.Tensor, tau: float) -> tuple[float, float]:
    """Sum of elementwise KL(P_t || P_s) over rows (softmax along j) and over columns (along i)."""
    b = teacher.shape[0]

    def softmax(xs):
        z = sum(math.exp(tau * x) for x in xs)
        return [math.exp(tau * x) / z for x in xs]

    rows = cols = 0.0
    for i in range(b):
        pt, ps = softmax(teacher[i].tolist()), softmax(student[i].tolist())
        rows += sum(t * (math.log(t) - math.log(s)) for t, s in zip(pt, ps, strict=True))
        pt, ps = softmax(teacher[:, i].tolist()), softmax(student[:, i].tolist())
        cols += sum(t * (math.log(t) - math.log(s)) for t, s in zip(pt, ps, strict=True))
    return rows, cols


def test_info_nce_hand_case():
    sim = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # each row and column: -log(e / (e + 1)) = log(1 + e^-1)
    assert float(info_nce(sim, 1.0)) == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


def test_info_nce_matches_loops_and_is_asymmetric_in_rows_and_columns():
    sim = torch.tensor([[0.9, 0.2, 0.4], [0.8, 0.5, 0.1], [0.3, 0.3, 0.7]], dtype=torch.float64)
    assert float(info_nce(sim, 5.0)) == pytest.approx(loop_info_nce(sim, 5.0), rel=1e-10)
    assert float(info_nce(sim, torch.tensor(5.0))) == pytest.approx(loop_info_nce(sim, 5.0), rel=1e-10)


def test_pimg_similarity_hand_case():
    pseudo = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # captions of video a: along x, along y
    frames = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # both frames of video b along x
    # s = [[1, 1], [0, 0]]: m = (1, 0) -> s1 = e/(e+1); n = (1, 1) -> s2 = 1
    want = (math.e / (math.e + 1) + 1) / 2
    assert float(pimg_similarity(pseudo, frames, 1.0)[0, 0]) == pytest.approx(want, rel=1e-6)


def test_pimg_similarity_matches_loops_and_chunking():
    pseudo, frames = unit(3, 4, 6, seed=1), unit(5, 3, 6, seed=2)  # different frame counts on purpose
    want = loop_pimg(pseudo, frames, 7.0)
    got = pimg_similarity(pseudo, frames, 7.0)
    assert got.shape == (3, 5)
    assert torch.allclose(got, want, atol=1e-10)
    assert torch.allclose(pimg_similarity(pseudo, frames, 7.0, max_elements=10), want, atol=1e-10)


def test_align_distill_hand_case():
    s_img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s_video = torch.zeros(2, 2)
    # each row/column: teacher (p, 1-p), p = e/(e+1); student uniform -> KL = p log 2p + (1-p) log 2(1-p)
    p = math.e / (math.e + 1)
    kl = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    ref = (2 * kl + 2 * kl) / 2 * 100 / 4
    assert float(align_distill(s_img, s_video, 1.0)) == pytest.approx(ref, rel=1e-5)
    assert float(align_distill(s_img, s_video, 1.0, scale="mean")) == pytest.approx(kl, rel=1e-5)


@pytest.mark.parametrize("b", [3, 5])
def test_align_distill_matches_loops(b):
    teacher, student = unit(b, 4, seed=3) @ unit(b, 4, seed=4).T, unit(b, 4, seed=5) @ unit(b, 4, seed=6).T
    rows, cols = loop_kl_sum(teacher, student, 10.0)
    assert float(align_distill(teacher, student, 10.0)) == pytest.approx(
        (rows + cols) / 2 * 100 / b**2, rel=1e-9
    )
    assert float(align_distill(teacher, student, 10.0, scale="mean")) == pytest.approx(
        (rows + cols) / 2 / b, rel=1e-9
    )
    assert float(align_distill(student, student, 10.0)) == pytest.approx(0.0, abs=1e-12)


def test_align_distill_teacher_gradient_follows_detach_flag():
    teacher = (unit(4, 3, seed=7) @ unit(4, 3, seed=8).T).requires_grad_()
    student = (unit(4, 3, seed=9) @ unit(4, 3, seed=10).T).requires_grad_()
    align_distill(teacher, student, 10.0).backward()
    assert teacher.grad is not None and teacher.grad.abs().sum() > 0
    teacher.grad = student.grad = None
    align_distill(teacher, student, 10.0, detach_teacher=True).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_align_distill_rejects_bad_input():
    with pytest.raises(ValueError, match="scale"):
        align_distill(torch.eye(2), torch.eye(2), 1.0, scale="sum")
    with pytest.raises(ValueError, match="square"):
        align_distill(torch.zeros(2, 3), torch.zeros(2, 3), 1.0)


def test_discovla_loss_composes_the_three_terms():
    b, f, e, tau = 4, 3, 6, 20.0
    text, frames, pseudo = unit(b, e, seed=11) * 3, unit(b, f, e, seed=12) * 2, unit(b, f, e, seed=13) * 5
    out = discovla_loss(text, frames, pseudo, tau, alpha=0.3, beta=1.5, detach_teacher=False)
    s_video = F.normalize(text, dim=-1) @ video_embedding(frames).T
    s_img = loop_pimg(F.normalize(pseudo, dim=-1), F.normalize(frames, dim=-1), tau)
    rows, cols = loop_kl_sum(s_img, s_video, tau)
    want_video, want_img = loop_info_nce(s_video, tau), loop_info_nce(s_img, tau)
    want_distill = (rows + cols) / 2 * 100 / b**2
    assert float(out["video"]) == pytest.approx(want_video, rel=1e-9)
    assert float(out["img"]) == pytest.approx(want_img, rel=1e-9)
    assert float(out["distill"]) == pytest.approx(want_distill, rel=1e-9)
    assert float(out["loss"]) == pytest.approx(want_video + 0.3 * want_img + 1.5 * want_distill, rel=1e-9)


def test_discovla_loss_without_pseudo_captions():
    text, frames = unit(3, 5, seed=14), unit(3, 2, 5, seed=15)
    out = discovla_loss(text, frames, None, 10.0, alpha=0.0, beta=0.0)
    assert float(out["loss"]) == float(out["video"]) and float(out["img"]) == 0.0 == float(out["distill"])
    with pytest.raises(ValueError, match="pseudo"):
        discovla_loss(text, frames, None, 10.0, alpha=0.3, beta=1.0)
    with pytest.raises(ValueError, match="same B"):
        discovla_loss(text[:2], frames, None, 10.0, alpha=0.0, beta=0.0)


def test_contrastive_loss_is_cross_entropy_both_ways_and_merges_repeated_groups() -> None:
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    logits = 10.0 * img @ txt.T
    labels = torch.arange(6)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(contrastive_loss(logits), expected)
    assert torch.allclose(contrastive_loss(logits, labels), expected)  # distinct groups: the plain loss
    # items sharing a group (a repeated caption) are all positives, the target split evenly between them
    groups = torch.tensor([0, 0, 1, 2, 3, 4])
    soft = (groups[:, None] == groups[None, :]).float()
    soft = soft / soft.sum(1, keepdim=True)
    expected = (F.cross_entropy(logits, soft) + F.cross_entropy(logits.T, soft)) / 2
    assert torch.allclose(contrastive_loss(logits, groups), expected)
    # so swapping the texts of two members of a group changes nothing, unlike with distinct groups
    swapped = 10.0 * img @ txt[[1, 0, 2, 3, 4, 5]].T
    assert torch.allclose(contrastive_loss(swapped, groups), contrastive_loss(logits, groups))
    assert not torch.allclose(contrastive_loss(swapped), contrastive_loss(logits))
    with pytest.raises(ValueError, match="square"):
        contrastive_loss(logits[:4])
