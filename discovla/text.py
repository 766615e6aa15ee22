"""Caption text: the one normalisation every caption goes through (generated, imported, ground truth),
and the error for bad caption input."""

from __future__ import annotations

import re

from discovla.errors import DiscoVLAError


class CaptionsError(DiscoVLAError, ValueError):
    """Bad input to captioning, to the tiny captioner, to the captions table or to pseudo-caption
    import/export, with what is wrong."""


_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")


def normalize_caption(text: str) -> str:
    """Lower-case, single-spaced, stripped caption, no space before punctuation (``a , b`` -> ``a, b``)."""
    return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.lower().split()))
