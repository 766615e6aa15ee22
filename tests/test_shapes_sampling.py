"""Shapes world specs: split sizes, parameter checks, and dependence on the seed alone."""

from __future__ import annotations

import numpy as np
import pytest

from discovla.config import ShapesParams
from discovla.data.shapes import ShapesError, captions_table, render_video, sample_specs, split_counts

BASE = dict(seed=7, train_videos=6, val_videos=3, test_videos=4, size=32, stills_train=16, stills_val=16)


def params(**changes: object) -> ShapesParams:
    return ShapesParams(**{**BASE, **changes})


@pytest.mark.parametrize("total", [2, 3, 5, 26, 500])
@pytest.mark.parametrize("fo,fc", [(0.2, 0.3), (0.0, 0.0), (1.0, 1.0), (0.0, 0.5), (0.5, 0.0)])
def test_split_counts(total: int, fo: float, fc: float) -> None:
    n_base, n_order, n_content = split_counts(total, fo, fc)
    assert n_base + n_order + n_content == total
    assert 0 <= n_order <= n_base and 0 <= n_content <= n_base
    assert (fo > 0 or n_order == 0) and (fc > 0 or n_content == 0)


def test_specs_frames_and_captions_depend_only_on_the_seed() -> None:
    same, other = params(), params(seed=8)
    a = [render_video(s) for s in sample_specs(same)[:3]]
    b = [render_video(s) for s in sample_specs(same)[:3]]
    c = [render_video(s) for s in sample_specs(other)[:3]]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    caps = captions_table(sample_specs(same), same)
    assert caps.equals(captions_table(sample_specs(same), same))
    assert not captions_table(sample_specs(other), other).equals(caps)


def test_bad_params_raise() -> None:
    with pytest.raises(ShapesError, match="even"):
        sample_specs(params(size=33))
    with pytest.raises(ShapesError, match="frames"):
        sample_specs(params(fps=2, seconds=1.0))


def test_static_captions_say_only_what_a_still_shows() -> None:
    from discovla.data.shapes import frame_captions
    from discovla.text import states_order

    narrative = ShapesParams(train_videos=12, val_videos=4, test_videos=6, train_captions=3)
    static = narrative.model_copy(update={"captions": "static"})
    specs = sample_specs(static)
    assert specs == sample_specs(narrative)  # the setting changes the captions only, not the videos
    caps = captions_table(specs, static)
    assert caps[["video_id", "split"]].equals(captions_table(specs, narrative)[["video_id", "split"]])
    by_id = {s.video_id: s for s in specs}
    motion = (
        "slides",
        "rises",
        "sinks",
        "appears",
        "vanishes",
        "turns",
        "moves",
        "drifts",
        "glides",
        "while",
    )
    for vid, grp in caps.groupby("video_id"):
        spec = by_id[vid]
        stills = set(frame_captions(spec))
        assert set(grp.caption) <= stills  # each one is the caption of one of the video's frames
        assert not any(states_order(c) or any(w in c.split() for w in motion) for c in grp.caption)
        if spec.split == "test":  # one caption: the middle frame's
            assert grp.caption.tolist() == [frame_captions(spec)[round((spec.frames - 1) / 2)]]
        else:
            assert len(grp) == 3
