"""Sampling video specs: rejection-sampled objects and roles, content twins, and the split sizes.

Each video has its own generator (:func:`video_rng`), so a spec depends only on the seed, the split and
the video's index.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from discovla.config import ShapesParams
from discovla.data.shapes.scene import (
    COLOURS,
    SHAPES,
    SIZES,
    ShapesError,
    cell_centre,
    inside_frame,
    object_radius,
    sample_background,
    shape_mask,
)
from discovla.data.shapes.video import EVENTS, MOTIONS, ShapeObject, VideoSpec, object_state


def _valid(objects: Sequence[ShapeObject], frames: int, n_slots: int, size: int) -> bool:
    """Objects stay inside the frame, never overlap, and every frame shows at least one object."""
    for t in range(frames):
        masks = []
        for obj in objects:
            x, y, visible, _ = object_state(obj, t, frames, n_slots, size)
            r = object_radius(obj.size, size)
            if not inside_frame(obj.shape, x, y, r, size):
                return False
            if visible:
                masks.append(shape_mask(obj.shape, x, y, r, size))
        if not masks or (len(masks) > 1 and np.max(np.sum(masks, axis=0)) > 1):
            return False
    return True


def _roles_consistent(objects: Sequence[ShapeObject]) -> bool:
    """An object's appearance comes before its other happenings, its disappearance after them."""
    for o in objects:
        if o.motion == "none" or o.event == "none":
            continue
        if o.move_slot == o.event_slot:
            return False
        if o.event == "appear" and o.event_slot > o.move_slot:
            return False
        if o.event == "disappear" and o.event_slot < o.move_slot:
            return False
    return True


def _sample_objects(
    rng: np.random.Generator, size: int, frames: int, need_content_twin: bool
) -> tuple[int, tuple[ShapeObject, ...]]:
    """Rejection-sample ``(n_slots, objects)`` of one base video."""
    for _ in range(10_000):
        n = int(
            rng.choice([2, 3], p=[0.5, 0.5])
            if need_content_twin
            else rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4])
        )
        colours = [str(c) for c in rng.choice(COLOURS, n, replace=False)]
        spare = [c for c in COLOURS if c not in colours]
        motions = [str(m) for m in rng.choice(MOTIONS, n, p=[0.3, 0.175, 0.175, 0.175, 0.175])]
        events = [str(e) for e in rng.choice(EVENTS, n, p=[0.55, 0.15, 0.15, 0.15])]
        kinds = [(i, "move") for i in range(n) if motions[i] != "none"]
        kinds += [(i, "event") for i in range(n) if events[i] != "none"]
        k = len(kinds)
        if not 1 <= k <= 3:
            continue
        # time slots: one per happening, two different objects may share one ("while")
        order = [kinds[j] for j in rng.permutation(k)]
        slots = list(range(k))
        if k >= 2 and rng.random() < 0.25:
            j = int(rng.integers(0, k - 1))
            if order[j][0] != order[j + 1][0]:
                slots = [s if s <= j else s - 1 for s in slots]
        n_slots = max(slots) + 1
        slot_of = {kind: s for kind, s in zip(order, slots, strict=True)}
        cells = [int(c) for c in rng.permutation(9)]
        objs = []
        for i in range(n):
            size_word = str(rng.choice(SIZES))
            cell = next((c for c in cells if _cell_allows(c, motions[i])), None)
            if cell is None:
                break
            cells.remove(cell)
            cx, cy = cell_centre(cell, size)
            jx, jy = rng.uniform(-0.04, 0.04, 2) * size
            new_colour = None
            if events[i] == "change":
                new_colour = spare.pop(int(rng.integers(0, len(spare))))
            objs.append(
                ShapeObject(
                    shape=str(rng.choice(SHAPES)),
                    colour=colours[i],
                    size=size_word,
                    x=float(cx + jx),
                    y=float(cy + jy),
                    motion=motions[i],
                    move_slot=slot_of.get((i, "move"), -1),
                    event=events[i],
                    event_slot=slot_of.get((i, "event"), -1),
                    new_colour=new_colour,
                )
            )
        if len(objs) < n or not _roles_consistent(objs) or not _valid(objs, frames, n_slots, size):
            continue
        return n_slots, tuple(objs)
    raise ShapesError(f"could not place objects in a {size}x{size} frame; use a larger shapes.size")


def _cell_allows(cell: int, motion: str) -> bool:
    row, col = divmod(cell, 3)
    return {"none": True, "left": col >= 1, "right": col <= 1, "up": row >= 1, "down": row <= 1}[motion]


def content_twin_objects(
    objects: Sequence[ShapeObject], rng: np.random.Generator, frames: int, n_slots: int, size: int
) -> tuple[ShapeObject, ...] | None:
    """Same objects, colours and places, roles (move/event) permuted so some object's role changes.

    Returns ``None`` when no such permutation gives a valid video.
    """
    n = len(objects)
    roles = [o.role() for o in objects]
    perms = [p for p in itertools.permutations(range(n)) if any(roles[p[i]] != roles[i] for i in range(n))]
    for j in rng.permutation(len(perms)):
        p = perms[int(j)]
        twin = tuple(
            replace(
                o,
                motion=roles[p[i]][0],
                move_slot=roles[p[i]][1],
                event=roles[p[i]][2],
                event_slot=roles[p[i]][3],
                new_colour=roles[p[i]][4],
            )
            for i, o in enumerate(objects)
        )
        if _roles_consistent(twin) and _valid(twin, frames, n_slots, size):
            return twin
    return None


def split_counts(total: int, order_fraction: float, content_fraction: float) -> tuple[int, int, int]:
    """``(base, order twins, content twins)`` summing to ``total``; twins are fractions of the bases."""
    n_base = max(1, round(total / (1 + order_fraction + content_fraction)))
    while True:
        n_order = min(round(order_fraction * n_base), total - n_base)
        n_content = total - n_base - n_order
        if n_content <= n_base and (content_fraction > 0 or n_content == 0):
            return n_base, n_order, n_content
        n_base += 1


SPLIT_KEYS = {"train": 0, "val": 1, "test": 2}


def video_rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    """Generator ``stream`` of video ``index`` of ``split`` (0: the spec, 1: captions, 99: twin picks)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLIT_KEYS[split], index, stream)))


def sample_specs(params: ShapesParams) -> list[VideoSpec]:
    """All video specs of all splits (bases first, then order twins, then content twins, per split)."""
    frames = round(params.fps * params.seconds)
    if frames < 6:
        raise ShapesError(f"shapes.fps * shapes.seconds = {frames} frames; need at least 6")
    if params.size % 2:
        raise ShapesError(f"shapes.size must be even for yuv420p H.264, got {params.size}")
    specs: list[VideoSpec] = []
    totals = {"train": params.train_videos, "val": params.val_videos, "test": params.test_videos}
    for split, total in totals.items():
        n_base, n_order, n_content = split_counts(
            total, params.order_twin_fraction, params.content_twin_fraction
        )
        pick = video_rng(params.seed, split, 0, 99)
        order_set = {int(i) for i in pick.choice(n_base, n_order, replace=False)}
        content_set = {int(i) for i in pick.choice(n_base, n_content, replace=False)}
        bases, order_twins, content_twins = [], [], []
        for i in range(n_base):
            rng = video_rng(params.seed, split, i, 0)
            bg = sample_background(rng)
            while True:
                n_slots, objs = _sample_objects(rng, params.size, frames, i in content_set)
                twin = (
                    content_twin_objects(objs, rng, frames, n_slots, params.size)
                    if i in content_set
                    else None
                )
                if i not in content_set or twin is not None:
                    break
            vid = f"{split}{i:05d}"
            bases.append(VideoSpec(vid, split, params.size, frames, params.fps, n_slots, bg, objs))
            if i in order_set:
                order_twins.append(replace(bases[-1], reverse=True, twin_of=vid, twin_kind="order"))
            if twin is not None:
                content_twins.append(replace(bases[-1], objects=twin, twin_of=vid, twin_kind="content"))
        twins = [
            replace(t, video_id=f"{split}{n_base + j:05d}") for j, t in enumerate(order_twins + content_twins)
        ]
        specs.extend(bases + twins)
    return specs
