"""The scene: the still vocabulary, dark backgrounds, shape masks on a 3x3 grid, and still images.

Everything here draws with plain numpy masks (no anti-aliasing), so the same objects always give the same
pixels. Videos (:mod:`.video`) draw their frames with the same backgrounds, masks and colours.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from discovla.errors import DiscoVLAError

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
    """A random background drawn from ``rng``."""
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
    """Centre ``(x, y)`` in pixels of grid cell ``cell`` (row-major, as :data:`POSITIONS`)."""
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


def object_radius(size_word: str, size: int) -> float:
    """Radius in pixels of an object of size ``size_word`` in a ``size`` x ``size`` frame."""
    return RADIUS[size_word] * size


def inside_frame(shape: str, x: float, y: float, r: float, size: int) -> bool:
    """Whether ``shape`` centred at ``(x, y)`` with radius ``r`` lies inside the frame (half-pixel margin)."""
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
            r = object_radius(size_word, size)
            cx, cy = cell_centre(int(cell), size)
            x, y = cx + rng.uniform(-0.03, 0.03) * size, cy + rng.uniform(-0.03, 0.03) * size
            if not inside_frame(shape, x, y, r, size):
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
