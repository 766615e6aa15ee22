"""Captions: the canonical still caption, its attribute parser, and narrative video captions.

Still captions list objects left to right with grid position phrases; video captions narrate moves and
events in time with words and structure the still captions never use (the language discrepancy).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from discovla.data.shapes.scene import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapesError,
    StillObject,
    position_index,
)
from discovla.data.shapes.video import ShapeObject, VideoSpec, frame_objects, semantic_objects
from discovla.text import CaptionsError, normalize_caption

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
MAX_CAPTION_TOKENS = 28  # words + commas; the CLIP text context is 32 tokens with start/end

# ---------------------------------------------------------------------------------------------- stills


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


def frame_captions(spec: VideoSpec) -> list[str]:
    """Ground-truth still caption of every frame (invisible objects omitted)."""
    return [still_caption(frame_objects(spec, t)) for t in range(spec.frames)]


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


def _happenings(objects: Sequence[ShapeObject]) -> list[tuple[int, int, str]]:
    """``(slot, object index, kind)`` for every move and event, in time order."""
    out = []
    for i, o in enumerate(objects):
        if o.motion != "none":
            out.append((o.move_slot, i, "move"))
        if o.event != "none":
            out.append((o.event_slot, i, o.event))
    return sorted(out)


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


def static_captions(spec: VideoSpec, n: int = 1) -> list[str]:
    """``n`` captions that say only what a single still of the video shows (``shapes.captions: static``):
    the still caption of the frame at ``(k + 1) / (n + 1)`` of the video (the middle frame for one caption),
    the nearest frame with a visible object if that one has none. No motion, no event, no order: the regime
    of appearance-level captions, where an image-level teacher can express the caption. Repeats are kept, so
    every video keeps ``n`` (video, caption) pairs, as in the narrative world."""
    objects_at = [frame_objects(spec, t) for t in range(spec.frames)]
    shown = [t for t, objs in enumerate(objects_at) if objs]
    if not shown:
        raise ShapesError(f"video {spec.video_id} shows no object in any frame")
    caps = []
    for k in range(n):
        want = round((k + 1) * (spec.frames - 1) / (n + 1))
        t = min(shown, key=lambda f: (abs(f - want), f))
        caps.append(still_caption(objects_at[t]))
    return caps


def caption_agreement(predicted: Sequence[str], truth: Sequence[str]) -> dict[str, Any]:
    """Exact-match rate and, per attribute, the fraction of captions whose set of words equals the truth's.

    Attributes are parsed by :func:`caption_attributes` (colours, shapes, sizes,
    positions); the comparison is of sets, so repeats and order do not count.
    """
    if len(predicted) != len(truth):
        raise CaptionsError(f"{len(predicted)} predicted captions for {len(truth)} ground-truth captions")
    if not len(truth):
        raise CaptionsError("no captions to score")
    exact = [normalize_caption(p) == normalize_caption(t) for p, t in zip(predicted, truth, strict=True)]
    hits: dict[str, int] = {}
    for p, t in zip(predicted, truth, strict=True):
        pa_, ta = caption_attributes(p), caption_attributes(t)
        for name in ta:
            hits[name] = hits.get(name, 0) + (set(pa_.get(name, [])) == set(ta[name]))
    out: dict[str, Any] = {"exact_match": round(float(np.mean(exact)), 4)}
    out.update({name: round(h / len(truth), 4) for name, h in hits.items()})
    return out
