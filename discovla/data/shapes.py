"""The shapes world: a seeded, fully offline video-text retrieval benchmark (DESIGN.md section 4).

Two corpora are generated from one seed:

* **Stills** (``stills/{train,val}.parquet``): single images with 1-3 objects (shape x colour x size) on a
  dark background, captioned in one canonical still style, objects listed left to right::

      "a small red circle at the top left and a large blue square on the right"

* **Videos** (``videos/<id>.mp4`` + ``captions.csv``): 1-3 objects that move (left, right, up, down or not
  at all) and may have an event (appear, disappear, change colour). Captions are narrative and ordered in
  time and deliberately use words and structure that still captions never use (the language discrepancy)::

      "a red circle in the upper left slides to the right, then a blue square pops up"

  Hard negatives ("twins") live in the same split as their partner: *order twins* are the exact time
  reversal (identical frame set), *content twins* keep the objects, colours and places but swap which
  object moves or has the event. ``twins.csv`` lists each pair in both directions and
  ``frame_truth.parquet`` gives the still-style caption of every source frame.

Everything is a pure function of the seed: specs are sampled with a ``numpy`` Generator per video
(``SeedSequence(seed, spawn_key=...)``), so the output does not depend on the number of workers. Frames are
rendered with plain numpy masks (no anti-aliasing) and encoded with libx264 (one ffmpeg per video, one
thread, bit-exact flags).
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing import get_context
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image
from tqdm import tqdm

from discovla.config import ShapesParams
from discovla.errors import DiscoVLAError
from discovla.ffmpeg import ffmpeg_exe
from discovla.io import atomic_dir, write_parquet

# --------------------------------------------------------------------------------------------- vocabulary

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "white")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: tuple[str, ...] = ("small", "large")
#: Still-caption position phrases of the 3x3 grid, row-major (top row first).
POSITIONS: tuple[str, ...] = (
    "at the top left",
    "at the top",
    "at the top right",
    "on the left",
    "in the centre",
    "on the right",
    "at the bottom left",
    "at the bottom",
    "at the bottom right",
)
#: Video-caption place phrases (same grid, words the still captions never use).
VIDEO_PLACES: tuple[str, ...] = (
    "in the upper left",
    "near the top edge",
    "in the upper right",
    "near the left edge",
    "in the middle",
    "near the right edge",
    "in the lower left",
    "near the bottom edge",
    "in the lower right",
)
MOTIONS: tuple[str, ...] = ("none", "left", "right", "up", "down")
EVENTS: tuple[str, ...] = ("none", "appear", "disappear", "change")

#: Object colours: saturated or bright, every one has a channel >= 170 (backgrounds stay <= ~100).
RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 70),
    "blue": (40, 110, 250),
    "yellow": (245, 225, 40),
    "purple": (175, 70, 230),
    "white": (245, 245, 245),
}
#: Object "radius" as a fraction of the frame side.
RADIUS: dict[str, float] = {"small": 0.085, "large": 0.14}
DIRECTION: dict[str, tuple[int, int]] = {
    "none": (0, 0),
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}
OPPOSITE: dict[str, str] = {"none": "none", "left": "right", "right": "left", "up": "down", "down": "up"}
MOVE_DISTANCE = 0.3  # fraction of the frame side travelled by a moving object
MAX_CAPTION_TOKENS = 28  # words + commas; the CLIP text context is 32 tokens with start/end
BACKGROUND_MAX = 56  # background base channel values are drawn from [0, BACKGROUND_MAX)


class ShapesError(DiscoVLAError, ValueError):
    """Parameters the shapes world cannot be generated with."""


# ------------------------------------------------------------------------------------------ backgrounds


@dataclass(frozen=True)
class Background:
    """A dark background: ``solid``, a linear ``gradient`` between two colours, or low-amplitude ``noise``."""

    kind: str
    colour_a: tuple[int, int, int]
    colour_b: tuple[int, int, int]
    angle: float
    seed: int


def sample_background(rng: np.random.Generator) -> Background:
    kind = str(rng.choice(["solid", "gradient", "noise"]))
    a = tuple(int(v) for v in rng.integers(0, BACKGROUND_MAX, 3))
    b = tuple(int(v) for v in rng.integers(0, BACKGROUND_MAX, 3))
    return Background(kind, a, b, float(rng.uniform(0.0, 2 * math.pi)), int(rng.integers(0, 2**31 - 1)))


def render_background(bg: Background, size: int) -> np.ndarray:
    """``(size, size, 3) uint8``; every channel stays well below the object colours' bright channel."""
    a = np.asarray(bg.colour_a, dtype=np.float32)
    if bg.kind == "solid":
        img = np.broadcast_to(a, (size, size, 3)).astype(np.float32)
    elif bg.kind == "gradient":
        yy, xx = _grid(size)
        proj = xx * math.cos(bg.angle) + yy * math.sin(bg.angle)
        p = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
        img = a * (1 - p[..., None]) + np.asarray(bg.colour_b, dtype=np.float32) * p[..., None]
    elif bg.kind == "noise":
        g = np.random.default_rng(bg.seed)
        coarse = g.normal(0.0, 10.0, (4, 4, 3)).astype(np.float32)
        rep = -(-size // 4)
        smooth = np.kron(coarse, np.ones((rep, rep, 1), dtype=np.float32))[:size, :size]
        fine = g.normal(0.0, 4.0, (size, size, 3)).astype(np.float32)
        img = a + 20.0 + smooth + fine
    else:
        raise ShapesError(f"unknown background kind {bg.kind!r}")
    return np.clip(img, 0, 110).astype(np.uint8)


# --------------------------------------------------------------------------------------------- drawing


@functools.cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(yy, xx)``, cached and read-only."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Boolean ``(size, size)`` mask of ``shape`` centred at ``(cx, cy)`` with radius ``r`` pixels."""
    yy, xx = _grid(size)
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        h = 0.85 * r
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.1 * r
    if shape == "triangle":  # pointing up, apex at cy - r, base at cy + 0.75 r
        top, base, half = -r, 0.75 * r, 0.95 * r
        return (dy <= base) & (np.abs(dx) <= (dy - top) * half / (base - top))
    raise ShapesError(f"unknown shape {shape!r} (expected one of {', '.join(SHAPES)})")


def position_index(x: float, y: float, size: int) -> int:
    """Index into :data:`POSITIONS` of the 3x3 grid cell containing the point ``(x, y)``."""
    col = min(max(int(3 * x / size), 0), 2)
    row = min(max(int(3 * y / size), 0), 2)
    return 3 * row + col


def cell_centre(cell: int, size: int) -> tuple[float, float]:
    row, col = divmod(cell, 3)
    return ((col + 0.5) * size / 3, (row + 0.5) * size / 3)


# ------------------------------------------------------------------------------------------------ stills


@dataclass(frozen=True)
class StillObject:
    """One object as a still caption sees it: attributes and the grid position phrase."""

    shape: str
    colour: str
    size: str
    position: str


def _still_order(o: StillObject) -> tuple[int, int, str, str, str]:
    row, col = divmod(POSITIONS.index(o.position), 3)
    return (col, row, o.shape, o.colour, o.size)


def still_caption(objects: Sequence[StillObject]) -> str:
    """Canonical still caption: objects left to right (then top to bottom), ``a, b and c``."""
    if not objects:
        raise ShapesError("a still caption needs at least one object")
    parts = [f"a {o.size} {o.colour} {o.shape} {o.position}" for o in sorted(objects, key=_still_order)]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


_ATTR_RE = {
    "colours": re.compile(r"\b(" + "|".join(COLOURS) + r")\b"),
    "shapes": re.compile(r"\b(" + "|".join(SHAPES) + r")s?\b"),
    "sizes": re.compile(r"\b(" + "|".join(SIZES) + r")\b"),
    "positions": re.compile(
        r"(?<![a-z])("
        + "|".join(re.escape(p) for p in sorted(POSITIONS, key=len, reverse=True))
        + r")(?![a-z])"
    ),
}


def caption_attributes(text: str) -> dict[str, list[str]]:
    """Colour, shape, size and position words found in a still caption, in order of appearance.

    Returns ``{"colours": [...], "shapes": [...], "sizes": [...], "positions": [...]}`` (repeats kept;
    positions are full phrases from :data:`POSITIONS`, longest match first).
    """
    low = " ".join(text.lower().split())
    return {key: [m.group(1) for m in rx.finditer(low)] for key, rx in _ATTR_RE.items()}


def _object_radius(size_word: str, size: int) -> float:
    return RADIUS[size_word] * size


def _inside(shape: str, x: float, y: float, r: float, size: int) -> bool:
    ext = 1.1 * r if shape == "diamond" else r
    return ext + 0.5 <= x <= size - ext - 0.5 and ext + 0.5 <= y <= size - ext - 0.5


def sample_still(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[StillObject]]:
    """One still: ``(image (size, size, 3) uint8, objects)``; 1-3 objects in distinct grid cells."""
    n = int(rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4]))
    bg = render_background(sample_background(rng), size)
    while True:
        cells = rng.choice(9, n, replace=False)
        objs, masks = [], []
        for cell in cells:
            shape, colour = str(rng.choice(SHAPES)), str(rng.choice(COLOURS))
            size_word = str(rng.choice(SIZES))
            r = _object_radius(size_word, size)
            cx, cy = cell_centre(int(cell), size)
            x, y = cx + rng.uniform(-0.03, 0.03) * size, cy + rng.uniform(-0.03, 0.03) * size
            if not _inside(shape, x, y, r, size):
                x, y = cx, cy
            objs.append((shape, colour, size_word, x, y))
            masks.append(shape_mask(shape, x, y, r, size))
        if np.max(np.sum(masks, axis=0)) <= 1:
            break
    img = bg.copy()
    still_objs = []
    for (shape, colour, size_word, x, y), mask in zip(objs, masks, strict=True):
        img[mask] = RGB[colour]
        still_objs.append(StillObject(shape, colour, size_word, POSITIONS[position_index(x, y, size)]))
    return img, still_objs


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


STILLS_CHUNK = 500


def _still_chunk(task: tuple[int, int, int, int, int]) -> list[tuple[bytes, str]]:
    seed, split_key, start, stop, size = task
    out = []
    for i in range(start, stop):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(100 + split_key, i)))
        img, objs = sample_still(rng, size)
        out.append((png_bytes(img), still_caption(objs)))
    return out


def make_stills(seed: int, split: str, count: int, size: int, pool: Pool | None = None) -> pa.Table:
    """``count`` stills of ``split`` as a table ``image (PNG bytes), caption``; deterministic in ``seed``.

    Each still has its own generator (``SeedSequence(seed, spawn_key=(100 + split, i))``), so the result
    does not depend on ``pool``.
    """
    split_key = {"train": 0, "val": 1}[split]
    tasks = [(seed, split_key, a, min(a + STILLS_CHUNK, count), size) for a in range(0, count, STILLS_CHUNK)]
    chunks = pool.imap(_still_chunk, tasks) if pool is not None else map(_still_chunk, tasks)
    images, captions = [], []
    with tqdm(total=count, desc=f"stills {split}", unit="img", mininterval=1.0) as bar:
        for chunk in chunks:
            images += [c[0] for c in chunk]
            captions += [c[1] for c in chunk]
            bar.update(len(chunk))
    return pa.table({"image": pa.array(images, pa.binary()), "caption": pa.array(captions, pa.string())})


def write_stills(params: ShapesParams, out_dir: str | Path, pool: Pool | None = None) -> dict[str, Any]:
    """Write ``stills/train.parquet`` and ``stills/val.parquet`` under ``out_dir``; returns counts."""
    out = {}
    for split, count in (("train", params.stills_train), ("val", params.stills_val)):
        table = make_stills(params.seed, split, count, params.size, pool)
        write_parquet(Path(out_dir) / f"{split}.parquet", table)
        caps = table.column("caption").to_pylist()
        out[split] = {"images": count, "distinct_captions": len(set(caps))}
    return out


# ---------------------------------------------------------------------------------------------- videos


@dataclass(frozen=True)
class ShapeObject:
    """One video object: attributes, start centre (pixels) and its role.

    The clip is cut into ``n_slots`` equal time slots. A mover travels ``MOVE_DISTANCE`` of the frame in
    direction ``motion`` during ``move_slot``; an event (``appear``, ``disappear``, ``change`` to
    ``new_colour``) happens in the middle of ``event_slot``.
    """

    shape: str
    colour: str
    size: str
    x: float
    y: float
    motion: str = "none"
    move_slot: int = -1
    event: str = "none"
    event_slot: int = -1
    new_colour: str | None = None

    def role(self) -> tuple[str, int, str, int, str | None]:
        return (self.motion, self.move_slot, self.event, self.event_slot, self.new_colour)

    def identity(self) -> tuple[str, str, str]:
        return (self.shape, self.colour, self.size)


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render one video and write its captions.

    ``reverse``: the frames are those of ``objects`` played backwards (an order twin).
    """

    video_id: str
    split: str
    size: int
    frames: int
    fps: int
    n_slots: int
    background: Background
    objects: tuple[ShapeObject, ...]
    reverse: bool = False
    twin_of: str | None = None
    twin_kind: str | None = None


def slot_bounds(frames: int, n_slots: int, slot: int) -> tuple[int, int]:
    """``[start, end)`` frame range of time slot ``slot``."""
    return (round(slot * frames / n_slots), round((slot + 1) * frames / n_slots))


def event_frame(frames: int, n_slots: int, slot: int) -> int:
    """First frame showing the post-event state (the middle of the slot)."""
    a, b = slot_bounds(frames, n_slots, slot)
    return a + (b - a) // 2


def object_state(
    obj: ShapeObject, t: int, frames: int, n_slots: int, size: int
) -> tuple[float, float, bool, str]:
    """``(x, y, visible, colour)`` of ``obj`` at frame ``t`` (forward time)."""
    x, y = obj.x, obj.y
    if obj.motion != "none":
        a, b = slot_bounds(frames, n_slots, obj.move_slot)
        u = min(max((t - a) / max(b - 1 - a, 1), 0.0), 1.0)
        dx, dy = DIRECTION[obj.motion]
        x, y = x + dx * MOVE_DISTANCE * size * u, y + dy * MOVE_DISTANCE * size * u
    visible, colour = True, obj.colour
    if obj.event != "none":
        after = t >= event_frame(frames, n_slots, obj.event_slot)
        if obj.event == "appear":
            visible = after
        elif obj.event == "disappear":
            visible = not after
        elif after:
            colour = obj.new_colour or obj.colour
    return x, y, visible, colour


def _forward_frames(spec: VideoSpec) -> np.ndarray:
    bg = render_background(spec.background, spec.size)
    out = np.repeat(bg[None], spec.frames, axis=0)
    for t in range(spec.frames):
        for obj in spec.objects:
            x, y, visible, colour = object_state(obj, t, spec.frames, spec.n_slots, spec.size)
            if visible:
                mask = shape_mask(obj.shape, x, y, _object_radius(obj.size, spec.size), spec.size)
                out[t][mask] = RGB[colour]
    return out


def render_video(spec: VideoSpec) -> np.ndarray:
    """Frames ``(T, size, size, 3) uint8``; an order twin is exactly its base's frames reversed."""
    frames = _forward_frames(spec)
    return np.ascontiguousarray(frames[::-1]) if spec.reverse else frames


def frame_objects(spec: VideoSpec, t: int) -> list[StillObject]:
    """The visible objects of displayed frame ``t`` as a still caption sees them."""
    src = spec.frames - 1 - t if spec.reverse else t
    objs = []
    for obj in spec.objects:
        x, y, visible, colour = object_state(obj, src, spec.frames, spec.n_slots, spec.size)
        if visible:
            objs.append(StillObject(obj.shape, colour, obj.size, POSITIONS[position_index(x, y, spec.size)]))
    return objs


def frame_captions(spec: VideoSpec) -> list[str]:
    """Ground-truth still caption of every frame (invisible objects omitted)."""
    return [still_caption(frame_objects(spec, t)) for t in range(spec.frames)]


def _valid(objects: Sequence[ShapeObject], frames: int, n_slots: int, size: int) -> bool:
    """Objects stay inside the frame, never overlap, and every frame shows at least one object."""
    for t in range(frames):
        masks = []
        for obj in objects:
            x, y, visible, _ = object_state(obj, t, frames, n_slots, size)
            r = _object_radius(obj.size, size)
            if not _inside(obj.shape, x, y, r, size):
                return False
            if visible:
                masks.append(shape_mask(obj.shape, x, y, r, size))
        if not masks or (len(masks) > 1 and np.max(np.sum(masks, axis=0)) > 1):
            return False
    return True


def _happenings(objects: Sequence[ShapeObject]) -> list[tuple[int, int, str]]:
    """``(slot, object index, kind)`` for every move and event, in time order."""
    out = []
    for i, o in enumerate(objects):
        if o.motion != "none":
            out.append((o.move_slot, i, "move"))
        if o.event != "none":
            out.append((o.event_slot, i, o.event))
    return sorted(out)


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


def _video_rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
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
        pick = _video_rng(params.seed, split, 0, 99)
        order_set = {int(i) for i in pick.choice(n_base, n_order, replace=False)}
        content_set = {int(i) for i in pick.choice(n_base, n_content, replace=False)}
        bases, order_twins, content_twins = [], [], []
        for i in range(n_base):
            rng = _video_rng(params.seed, split, i, 0)
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


# -------------------------------------------------------------------------------------- video captions

_MOVE_PHRASES = {
    "left": ("slides to the left", "drifts to the left", "glides left", "moves leftwards", "travels left"),
    "right": (
        "slides to the right",
        "drifts to the right",
        "glides right",
        "moves rightwards",
        "travels right",
    ),
    "up": ("rises", "floats upwards", "drifts up", "glides upwards", "moves up"),
    "down": ("sinks", "drops down", "drifts down", "glides downwards", "moves down"),
}
_APPEAR = ("appears", "pops up", "shows up", "comes into view")
_DISAPPEAR = ("vanishes", "disappears", "goes away", "leaves the scene")
_STAY_ONE = ("stays still", "sits still", "does not move", "stays put", "remains in place")
_STAY_MANY = ("stay still", "sit still", "do not move", "stay put", "remain in place")
_THEN = (", then ", ", and then ", ", after that ", ", after which ")
_WHILE = (" while ", " as ")


def semantic_objects(spec: VideoSpec) -> tuple[ShapeObject, ...]:
    """Objects as seen in displayed time: for an order twin, the time-reversed roles and start places."""
    if not spec.reverse:
        return spec.objects
    out = []
    for o in spec.objects:
        end_x, end_y, _, _ = object_state(o, spec.frames - 1, spec.frames, spec.n_slots, spec.size)
        last = spec.n_slots - 1
        event, colour, new_colour = o.event, o.colour, o.new_colour
        if event == "appear":
            event = "disappear"
        elif event == "disappear":
            event = "appear"
        elif event == "change":
            colour, new_colour = o.new_colour or o.colour, o.colour
        out.append(
            replace(
                o,
                colour=colour,
                new_colour=new_colour,
                x=end_x,
                y=end_y,
                motion=OPPOSITE[o.motion],
                move_slot=last - o.move_slot if o.motion != "none" else -1,
                event=event,
                event_slot=last - o.event_slot if o.event != "none" else -1,
            )
        )
    return tuple(out)


def _tokens(text: str) -> int:
    return len(text.split()) + text.count(",")


def _narrate(
    objects: Sequence[ShapeObject],
    size: int,
    rng: np.random.Generator,
    use_size: bool,
    use_place: bool,
    use_still: bool,
) -> str:
    """One narrative caption of ``objects`` (displayed time); word choices drawn from ``rng``."""
    mentioned: set[int] = set()
    colour_now = {i: o.colour for i, o in enumerate(objects)}

    def ref(i: int, with_colour: bool = True) -> str:
        o = objects[i]
        colour = f"{colour_now[i]} " if with_colour else ""
        if i in mentioned:
            return f"the {colour}{o.shape}"
        mentioned.add(i)
        size_word = f"{o.size} " if use_size else ""
        place = f" {VIDEO_PLACES[position_index(o.x, o.y, size)]}" if use_place else ""
        return f"a {size_word}{colour}{o.shape}{place}"

    def clause(i: int, kind: str) -> str:
        o = objects[i]
        if kind == "move":
            return f"{ref(i)} {rng.choice(_MOVE_PHRASES[o.motion])}"
        if kind == "appear":
            return f"{ref(i)} {rng.choice(_APPEAR)}"
        if kind == "disappear":
            return f"{ref(i)} {rng.choice(_DISAPPEAR)}"
        old, new = colour_now[i], o.new_colour or o.colour
        unique_shape = sum(x.shape == o.shape for x in objects) == 1
        if i not in mentioned and unique_shape and rng.random() < 0.5:
            text = f"{ref(i, with_colour=False)} turns from {old} to {new}"
        else:
            text = f"{ref(i)} {rng.choice(('turns', 'becomes', 'changes to', 'switches to'))} {new}"
        colour_now[i] = new
        return text

    groups: dict[int, list[tuple[int, str]]] = {}
    for slot, i, kind in _happenings(objects):
        groups.setdefault(slot, []).append((i, kind))
    parts = [
        str(rng.choice(_WHILE)).join(clause(i, kind) for i, kind in group)
        for _, group in sorted(groups.items())
    ]
    text = parts[0]
    for part in parts[1:]:
        text += str(rng.choice(_THEN)) + part
    still = [i for i in range(len(objects)) if i not in mentioned]
    if still and use_still:
        refs = [ref(i) for i in still]
        who = refs[0] if len(refs) == 1 else f"{refs[0]} and {refs[1]}"
        verb = rng.choice(_STAY_ONE if len(refs) == 1 else _STAY_MANY)
        text += f", while {who} {verb}"
    return text


def narrative_caption(spec: VideoSpec, rng: np.random.Generator, detailed: bool = False) -> str:
    """One narrative caption; ``detailed`` starts from sizes and places and drops detail only to fit."""
    objects = semantic_objects(spec)
    if detailed:
        flags = [True, True, True]
    else:
        flags = [bool(rng.random() < 0.5), bool(rng.random() < 0.6), bool(rng.random() < 0.7)]
    # drop detail (sizes, then places, then the still objects) until it fits the text context
    for drop in range(4):
        f = [flags[0] and drop < 1, flags[1] and drop < 2, flags[2] and drop < 3]
        state = rng.bit_generator.state
        text = _narrate(objects, spec.size, rng, *f)
        if _tokens(text) <= MAX_CAPTION_TOKENS:
            return text
        rng.bit_generator.state = state
    return text


def video_captions(spec: VideoSpec, rng: np.random.Generator, n: int = 1) -> list[str]:
    """``n`` narrative captions of ``spec``: the first detailed, then distinct paraphrases where possible."""
    caps = [narrative_caption(spec, rng, detailed=True)]
    for _ in range(50 * n):
        if len(caps) >= n:
            break
        cap = narrative_caption(spec, rng)
        if cap not in caps:
            caps.append(cap)
    while len(caps) < n:
        caps.append(narrative_caption(spec, rng))
    return caps


# -------------------------------------------------------------------------------------------- writing


def encode_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    """Encode ``(T, H, W, 3) uint8`` RGB frames as H.264 (libx264, yuv420p, crf 18), deterministically."""
    t, h, w, _ = frames.shape
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:0",
        "-an", "-c:v", "libx264", "-preset", "medium", "-crf", "18", "-pix_fmt", "yuv420p",
        "-threads", "1", "-x264-params", "threads=1:lookahead-threads=1",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
        "-movflags", "+faststart", str(path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True, check=False)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"ffmpeg failed to encode {path.name}: {msg[-1] if msg else proc.returncode}")


def _make_video(task: tuple[VideoSpec, str]) -> tuple[str, list[str]]:
    spec, videos_dir = task
    encode_mp4(render_video(spec), Path(videos_dir) / f"{spec.video_id}.mp4", spec.fps)
    return spec.video_id, frame_captions(spec)


def captions_table(specs: Sequence[VideoSpec], params: ShapesParams) -> pd.DataFrame:
    """``video_id, caption, split``: ``train_captions`` paraphrases per train/val video, one per test one."""
    rows = []
    for spec in specs:
        rng = _video_rng(params.seed, spec.split, int(spec.video_id[len(spec.split) :]), 1)
        n = 1 if spec.split == "test" else params.train_captions
        rows += [(spec.video_id, cap, spec.split) for cap in video_captions(spec, rng, n)]
    return pd.DataFrame(rows, columns=["video_id", "caption", "split"])


def twins_table(specs: Sequence[VideoSpec]) -> pd.DataFrame:
    """``video_id, twin_id, kind, split``: every twin pair in both directions."""
    rows = []
    for s in specs:
        if s.twin_of is not None:
            rows += [
                (s.twin_of, s.video_id, s.twin_kind, s.split),
                (s.video_id, s.twin_of, s.twin_kind, s.split),
            ]
    df = pd.DataFrame(rows, columns=["video_id", "twin_id", "kind", "split"])
    return df.sort_values(["video_id", "kind", "twin_id"], kind="stable").reset_index(drop=True)


def _dir_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 3)


def _twin_metrics(specs: Sequence[VideoSpec], caps: pd.DataFrame, twins: pd.DataFrame) -> dict[str, Any]:
    out = {}
    for split in SPLIT_KEYS:
        n = sum(s.split == split for s in specs)
        tw = twins[twins.split == split]
        out[split] = {
            "videos": n,
            "base_videos": sum(s.split == split and s.twin_of is None for s in specs),
            "captions": int((caps.split == split).sum()),
            "order_twin_pairs": int((tw.kind == "order").sum() // 2),
            "content_twin_pairs": int((tw.kind == "content").sum() // 2),
            "with_order_twin": round(tw[tw.kind == "order"].video_id.nunique() / max(n, 1), 4),
            "with_content_twin": round(tw[tw.kind == "content"].video_id.nunique() / max(n, 1), 4),
        }
    return out


def generate_world(params: ShapesParams, root: str | Path, workers: int = 2) -> dict[str, Any]:
    """Write the whole shapes world to ``root`` atomically (folder form + twins, frame truth, stills).

    ``workers`` processes render and encode videos (one single-threaded ffmpeg each) and render stills;
    the output does not depend on it. Returns the metrics (counts per split, twin fractions, stills,
    sizes on disk, seconds, videos/s).
    """
    start = time.perf_counter()
    specs = sample_specs(params)
    pool = get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        with atomic_dir(root) as tmp:
            videos_dir = tmp / "videos"
            videos_dir.mkdir()
            tasks = [(s, str(videos_dir)) for s in specs]
            results = (
                pool.imap_unordered(_make_video, tasks, chunksize=8) if pool else map(_make_video, tasks)
            )
            truth = dict(tqdm(results, total=len(tasks), desc="shapes videos", unit="video", mininterval=1.0))
            video_seconds = time.perf_counter() - start
            caps = captions_table(specs, params)
            caps.to_csv(tmp / "captions.csv", index=False)
            twins = twins_table(specs)
            twins.to_csv(tmp / "twins.csv", index=False)
            write_parquet(tmp / "frame_truth.parquet", frame_truth_table(specs, truth))
            stills = write_stills(params, tmp / "stills", pool)
            metrics = {
                "seed": params.seed,
                "size": params.size,
                "fps": params.fps,
                "frames_per_video": specs[0].frames,
                "splits": _twin_metrics(specs, caps, twins),
                "stills": stills,
                "disk_mb": {"videos": _dir_mb(videos_dir), "stills": _dir_mb(tmp / "stills")},
            }
    finally:
        if pool is not None:
            pool.terminate()  # all work is collected above; on error this stops the rest
            pool.join()
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    metrics["video_seconds"] = round(video_seconds, 2)
    metrics["videos_per_s"] = round(len(specs) / max(video_seconds, 1e-9), 2)
    return metrics


def frame_truth_table(specs: Sequence[VideoSpec], truth: dict[str, list[str]]) -> pa.Table:
    """``video_id, source_frame (int32), time (float64), caption`` for every frame of every video."""
    ids, frames, times, caps = [], [], [], []
    for s in specs:
        for t, cap in enumerate(truth[s.video_id]):
            ids.append(s.video_id)
            frames.append(t)
            times.append(t / s.fps)
            caps.append(cap)
    return pa.table(
        {
            "video_id": pa.array(ids, pa.string()),
            "source_frame": pa.array(frames, pa.int32()),
            "time": pa.array(times, pa.float64()),
            "caption": pa.array(caps, pa.string()),
        }
    )
