"""The sampling rule: which F frames of a decoded timeline a video's sample is made of.

Frame ``k`` is on display from its pts until the next frame's pts (the last frame for its own duration).
With ``start`` the first pts and ``span = last pts - start + one frame duration``, the F target times are
the centres of F equal segments of ``[start, start + span]``, and sample ``i`` is the frame on display at
target ``i`` (equivalently the frame whose display interval centre is nearest). The arithmetic is done in
exact fractions of the time base, so there are no float ties. A video with fewer decodable frames than F
repeats frames (``repeated=True``); a 1-frame video repeats it F times. For a constant-rate video the rule
is symmetric under time reversal whenever no target falls exactly on a frame boundary (e.g. 20 frames and
F = 8), so a video and its reversal get the same frame set.

``max_fps`` pre-thins long clips: walking the frames in decoding order, a frame is kept when it is the
first or at least ``1 / max_fps`` seconds after the last kept one (the real pts are kept, nothing is
retimed onto a grid); ``source_frames`` and ``duration`` still count every decoded frame, and each sample
is the kept frame nearest to the frame the rule above picks (ties: the later one).

This module is pure arithmetic on timelines; :mod:`discovla.sampling` decodes the videos.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from fractions import Fraction

import numpy as np


class VideoError(Exception):
    """A video that cannot be sampled; ``reason`` is short and stable (see :mod:`discovla.sampling`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SampledVideo:
    """F frames sampled from one video.

    ``frames``: uint8 ``[F, size, size, 3]`` RGB. ``timestamps``: float64 ``[F]``, the real pts (seconds from
    the file's start time) of the chosen frames. ``indices``: int64 ``[F]``, which decoded frame (0-based,
    presentation order) each sample is. ``source_frames``: number of decodable frames. ``duration``: seconds
    covered by them (last pts - first pts + one frame duration). ``repeated``: some decoded frame was used
    twice.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    indices: np.ndarray
    source_frames: int
    duration: float
    repeated: bool


@dataclass(frozen=True)
class Plan:
    """The rule applied to one timeline: ``picks`` are positions in decoding order (the order the frames
    were given in), one per sample; ``pts`` their pts; ``indices`` their positions in presentation order."""

    picks: list[int]
    pts: list[int]
    indices: list[int]
    source_frames: int
    span: int


def span_of(pts: list[int], durs: list[int]) -> tuple[int, int]:
    """(start, span) of sorted pts: last - first + one frame duration (the last frame's, else the median
    step between frames)."""
    last = durs[-1] if durs and durs[-1] > 0 else 0
    if last <= 0 and len(pts) > 1:
        diffs = np.diff(np.asarray(pts, dtype=np.int64))
        diffs = diffs[diffs > 0]
        last = int(np.median(diffs)) if diffs.size else 0
    return pts[0], pts[-1] - pts[0] + last


def choose_frames(pts: list[int], num_frames: int, start: int, span: int) -> list[int]:
    """Indices into sorted ``pts`` of the frames on display at the centres of ``num_frames`` equal segments
    of ``[start, start + span]`` (exact rational arithmetic; a target before the first pts takes frame 0)."""
    targets = (Fraction(start) + Fraction((2 * i + 1) * span, 2 * num_frames) for i in range(num_frames))
    return [max(0, bisect.bisect_right(pts, t) - 1) for t in targets]


def thin(pts: list[int], time_base: Fraction, max_fps: float) -> list[int]:
    """Positions (decoding order) of the frames ``max_fps`` keeps: the first, then each one at least
    ``1 / max_fps`` seconds (less 1e-6, rounded to 9 decimals) after the last kept one, in float seconds."""
    gap = float(f"{1.0 / max_fps - 1e-6:.9f}")
    tb = time_base.numerator / time_base.denominator
    kept: list[int] = []
    prev: float | None = None
    for i, p in enumerate(pts):
        t = p * tb
        if prev is None or t - prev >= gap:
            kept.append(i)
            prev = t
    return kept


def _nearest(sorted_pts: list[int], value: int) -> int:
    """Index of the entry of ``sorted_pts`` nearest to ``value`` (ties: the later one)."""
    i = bisect.bisect_left(sorted_pts, value)
    if i == len(sorted_pts):
        return i - 1
    if i > 0 and value - sorted_pts[i - 1] < sorted_pts[i] - value:
        return i - 1
    return i


def plan(
    pts: list[int], durs: list[int], num_frames: int, time_base: Fraction, max_fps: float | None = None
) -> Plan:
    """The rule on a timeline given in decoding order (``pts`` and ``durs`` per frame; at least one frame).

    Frames are put in presentation order by a stable sort on pts; a repeated pts is shown for no time, so
    the rule picks the later of equal frames."""
    order = sorted(range(len(pts)), key=lambda i: pts[i])
    all_pts = [pts[i] for i in order]
    start, span = span_of(all_pts, [durs[i] for i in order])
    chosen = choose_frames(all_pts, num_frames, start, span)
    if max_fps is not None:
        kept = sorted(thin(pts, time_base, max_fps), key=lambda i: pts[i])
        kept_pts = [pts[i] for i in kept]
        picks = [kept[_nearest(kept_pts, all_pts[j])] for j in chosen]
        rank = {i: r for r, i in enumerate(order)}
        indices = [rank[i] for i in picks]
    else:
        picks = [order[j] for j in chosen]
        indices = chosen
    return Plan(picks, [pts[i] for i in picks], indices, len(pts), span)
