"""Videos: objects that move and have events over time slots, their state per frame, and the frames.

A :class:`VideoSpec` is everything one video is rendered and captioned from; an order twin (``reverse``)
shows exactly its base's frames backwards. Specs are sampled in :mod:`.sampling`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from discovla.data.shapes.scene import (
    POSITIONS,
    RGB,
    Background,
    StillObject,
    object_radius,
    position_index,
    render_background,
    shape_mask,
)

MOTIONS: tuple[str, ...] = ("none", "left", "right", "up", "down")
EVENTS: tuple[str, ...] = ("none", "appear", "disappear", "change")
DIRECTION: dict[str, tuple[int, int]] = {
    "none": (0, 0),
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}
OPPOSITE: dict[str, str] = {"none": "none", "left": "right", "right": "left", "up": "down", "down": "up"}
MOVE_DISTANCE = 0.3  # fraction of the frame side travelled by a moving object


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
                mask = shape_mask(obj.shape, x, y, object_radius(obj.size, spec.size), spec.size)
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
