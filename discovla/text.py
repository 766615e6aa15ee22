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


#: Words that state an order of events in a caption (the reversal test's "ordered" subset). Word-level
#: match after :func:`normalize_caption`; "after that" and "after which" match through "after".
ORDER_WORDS = frozenset(
    {
        "after",
        "afterwards",
        "before",
        "begins",
        "ends",
        "eventually",
        "finally",
        "first",
        "followed",
        "later",
        "next",
        "once",
        "starts",
        "then",
        "until",
    }
)
_WORD = re.compile(r"[a-z]+")


def states_order(caption: str) -> bool:
    """Whether ``caption`` contains a word of :data:`ORDER_WORDS` ("a circle appears, then ...")."""
    return any(w in ORDER_WORDS for w in _WORD.findall(normalize_caption(caption)))
