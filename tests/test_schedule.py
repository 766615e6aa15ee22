"""The one learning-rate schedule: linear warm-up, then cosine to zero, from torch's schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from discovla.schedule import fast_forward, warmup_cosine, warmup_steps


def _lrs(total: int, warmup: float, lr: float = 1.0, steps: int | None = None) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = warmup_cosine(opt, warmup, total)
    out = []
    for _ in range(total if steps is None else steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(("total", "warmup"), [(100, 0.1), (500, 0.1), (780, 0.05), (3750, 0.05), (37, 0.3)])
def test_matches_the_closed_form(total: int, warmup: float) -> None:
    warm = warmup_steps(warmup, total)
    for s, got in enumerate(_lrs(total, warmup, lr=6e-4)):
        want = (
            6e-4 * (s + 1) / warm
            if s < warm
            else 3e-4 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        )
        assert got == pytest.approx(want, rel=1e-9, abs=1e-18), s


def test_warms_up_linearly_then_decays_to_zero() -> None:
    lrs = _lrs(100, 0.1)
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] < 1e-3


def test_warmup_steps_rounds_and_keeps_at_least_one() -> None:
    assert warmup_steps(0.1, 500) == 50 and warmup_steps(0.05, 3750) == 188 and warmup_steps(0.0, 10) == 1
    lrs = _lrs(10, 0.0)  # no warm-up: full rate at once
    assert lrs[0] == lrs[1] == 1.0 and lrs[2] < 1.0  # one step at the full rate, then the cosine


def test_a_schedule_stepped_forward_continues_like_an_uninterrupted_one() -> None:
    full = _lrs(60, 0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, 0.1, 60)
    fast_forward(sched, 25)  # what a resumed run does before its first step
    rest = []
    for _ in range(35):
        rest.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rest == full[25:]
