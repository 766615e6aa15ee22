"""Shapes world captions: the canonical still caption and its attribute parser."""

from __future__ import annotations

from discovla.data.shapes import StillObject, caption_attributes, still_caption


def test_caption_attributes_and_canonical_order() -> None:
    objs = [
        StillObject("square", "blue", "large", "on the right"),
        StillObject("circle", "red", "small", "at the top left"),
    ]
    text = still_caption(objs)
    assert text == "a small red circle at the top left and a large blue square on the right"
    assert still_caption(objs[::-1]) == text
    assert caption_attributes(text) == {
        "colours": ["red", "blue"],
        "shapes": ["circle", "square"],
        "sizes": ["small", "large"],
        "positions": ["at the top left", "on the right"],
    }
    assert caption_attributes("A purple triangle at the top and a white diamond at the bottom right") == {
        "colours": ["purple", "white"],
        "shapes": ["triangle", "diamond"],
        "sizes": [],
        "positions": ["at the top", "at the bottom right"],
    }
