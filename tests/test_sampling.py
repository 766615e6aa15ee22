"""sample_frames on real files made with ffmpeg: uniform timing, content, sizes, and every bad input."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from discovla.ffmpeg import ffmpeg_exe
from discovla.sampling import VideoError, choose_frames, sample_frames

# The reasons a broken or truncated file may legitimately get (a truncated file may also decode partly).
BAD_REASONS = ("not a video", "no decodable frames", "too many decode errors", "no video stream")


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", *args], check=True)


def make_testsrc(path: Path, size: str = "64x48", rate: int = 10, seconds: float = 2.0, *extra: str) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}", "-t", str(seconds), *extra, str(path))
    return path


def ramp(path: Path, frames: int = 20, reverse: bool = False) -> Path:
    """Lossless RGB clip, 10 fps, whose frame n is uniformly (12 n, 128, 255 - 12 n) (reversed if asked)."""
    n = f"({frames - 1}-N)" if reverse else "N"
    src = f"color=c=black:s=32x32:r=10:d={frames / 10},format=rgb24,geq=r='{n}*12':g='128':b='255-{n}*12'"
    ffmpeg("-f", "lavfi", "-i", src, "-c:v", "libx264rgb", "-qp", "0", str(path))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    return {
        "plain": make_testsrc(d / "plain.mp4", "64x48", 10, 2.0, "-pix_fmt", "yuv420p"),
        "faststart": make_testsrc(
            d / "fast.mp4", "64x48", 10, 2.0, "-pix_fmt", "yuv420p", "-g", "5", "-movflags", "+faststart"
        ),
        "ramp": ramp(d / "ramp.mp4"),
        "ramp_reversed": ramp(d / "ramp_rev.mp4", reverse=True),
    }


def test_timestamps_uniform_and_size(clips: dict[str, Path]) -> None:
    s = sample_frames(clips["plain"], 4, 32)
    assert s.frames.shape == (4, 32, 32, 3) and s.frames.dtype == np.uint8
    assert s.source_frames == 20 and s.duration == pytest.approx(2.0) and not s.repeated
    centres = (np.arange(4) + 0.5) * 2.0 / 4
    # the frame on display at each segment centre: at most one frame interval before it
    assert np.all(s.timestamps <= centres + 1e-9) and np.all(centres - s.timestamps < 0.1 + 1e-9)
    gaps = np.diff(s.timestamps)
    assert np.allclose(gaps, gaps.mean(), atol=1e-6) and gaps.mean() == pytest.approx(0.5)
    assert np.allclose(s.timestamps, s.indices / 10)


def test_content_follows_time(clips: dict[str, Path]) -> None:
    s = sample_frames(clips["ramp"], 8, 16)
    red = s.frames[..., 0].reshape(8, -1)
    assert np.ptp(red, axis=1).max() <= 1  # uniform colour survives scale + crop
    assert np.all(np.diff(red.mean(axis=1)) > 0)  # colours follow the time order
    assert np.allclose(red.mean(axis=1), 12 * s.indices, atol=1)  # and are the chosen source frames
    assert np.allclose(s.frames[..., 2].mean(axis=(1, 2)), 255 - 12 * s.indices, atol=1)


def test_time_reversal_gives_the_same_frame_set(clips: dict[str, Path]) -> None:
    fwd = sample_frames(clips["ramp"], 8, 16)
    rev = sample_frames(clips["ramp_reversed"], 8, 16)
    assert np.array_equal(rev.indices, 19 - fwd.indices[::-1])
    assert np.array_equal(rev.frames, fwd.frames[::-1])


def test_choose_frames_is_exact() -> None:
    pts = list(range(0, 20 * 1024, 1024))  # 20 frames at 10 fps in a 1/10240 time base
    assert choose_frames(pts, 4, 0, 20 * 1024) == [2, 7, 12, 17]
    assert choose_frames(pts, 2, 0, 20 * 1024) == [5, 15]  # targets on a boundary: the frame shown then
    assert choose_frames([0], 3, 0, 0) == [0, 0, 0]


def test_max_fps_thinning_keeps_real_timestamps(clips: dict[str, Path]) -> None:
    full = sample_frames(clips["ramp"], 4, 16)
    thin = sample_frames(clips["ramp"], 4, 16, max_fps=2.5)
    assert thin.source_frames == full.source_frames and thin.duration == pytest.approx(full.duration)
    assert np.allclose(thin.timestamps, thin.indices / 10)  # real pts, not a retimed grid
    assert np.all(np.abs(thin.timestamps - full.timestamps) <= 0.2 + 1e-9)
    assert np.allclose(thin.frames[..., 0].mean(axis=(1, 2)), 12 * thin.indices, atol=1)


def test_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(VideoError) as e:
        sample_frames(tmp_path / "nope.mp4", 4, 32)
    assert e.value.reason == "missing file"
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError) as e:
        sample_frames(tmp_path / "empty.mp4", 4, 32)
    assert e.value.reason == "empty file"


def test_text_file_named_mp4(tmp_path: Path) -> None:
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError) as e:
        sample_frames(tmp_path / "notes.mp4", 4, 32)
    assert e.value.reason.startswith("not a video: ")


@pytest.mark.parametrize("ext", ["m4a", "mp4"])
def test_audio_only(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"audio.{ext}"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000", "-t", "0.5", "-c:a", "aac", str(path))
    with pytest.raises(VideoError) as e:
        sample_frames(path, 4, 32)
    assert e.value.reason == "no video stream"


def test_truncated_moov_at_end(tmp_path: Path, clips: dict[str, Path]) -> None:
    data = clips["plain"].read_bytes()
    assert data.find(b"moov") > len(data) // 2  # moov is at the end: half the file has none
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError) as e:
        sample_frames(tmp_path / "half.mp4", 4, 32)
    assert e.value.reason == "not a video: moov atom not found"


def test_truncated_after_moov_decodes_nothing(tmp_path: Path, clips: dict[str, Path]) -> None:
    data = clips["faststart"].read_bytes()
    cut = data.find(b"mdat") + 4  # header complete, no frame data at all
    (tmp_path / "cut.mp4").write_bytes(data[:cut])
    with pytest.raises(VideoError) as e:
        sample_frames(tmp_path / "cut.mp4", 4, 32)
    assert e.value.reason == "no decodable frames"


def test_truncated_faststart_half(tmp_path: Path, clips: dict[str, Path]) -> None:
    """Moov intact, half the frame data: either sampled from the decodable part, or skipped with a reason."""
    data = clips["faststart"].read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    try:
        s = sample_frames(tmp_path / "half.mp4", 4, 32)
    except VideoError as e:
        assert e.reason.startswith(BAD_REASONS)
    else:
        assert s.frames.shape == (4, 32, 32, 3)
        assert 1 <= s.source_frames < 20 and s.duration < 2.0


def test_shorter_than_f_repeats(tmp_path: Path) -> None:
    path = make_testsrc(tmp_path / "three.mp4", "64x48", 10, 2.0, "-frames:v", "3", "-pix_fmt", "yuv420p")
    s = sample_frames(path, 4, 32)
    assert s.source_frames == 3 and s.repeated and s.frames.shape == (4, 32, 32, 3)
    assert list(s.indices) == sorted(s.indices) and set(s.indices) == {0, 1, 2}
    assert np.all(np.diff(s.timestamps) >= 0)


def test_single_frame_repeats(tmp_path: Path) -> None:
    path = make_testsrc(tmp_path / "one.mp4", "64x48", 10, 2.0, "-frames:v", "1", "-pix_fmt", "yuv420p")
    s = sample_frames(path, 5, 32)
    assert s.source_frames == 1 and s.repeated and list(s.indices) == [0] * 5
    assert all(np.array_equal(f, s.frames[0]) for f in s.frames)
    assert np.all(s.timestamps == s.timestamps[0])


def test_odd_resolution(tmp_path: Path) -> None:
    path = make_testsrc(tmp_path / "odd.mp4", "33x17", 10, 1.0, "-pix_fmt", "yuv444p")
    s = sample_frames(path, 4, 32)
    assert s.frames.shape == (4, 32, 32, 3) and s.source_frames == 10 and not s.repeated


def test_colon_in_name_is_a_file(tmp_path: Path, clips: dict[str, Path]) -> None:
    odd = tmp_path / "http:odd name.mp4"
    odd.write_bytes(clips["plain"].read_bytes())
    assert sample_frames(odd, 2, 16).frames.shape == (2, 16, 16, 3)


def test_bad_arguments(clips: dict[str, Path]) -> None:
    with pytest.raises(ValueError):
        sample_frames(clips["plain"], 0, 32)
    with pytest.raises(ValueError):
        sample_frames(clips["plain"], 4, 32, max_fps=0)


def test_timeout_bounds_the_work(clips: dict[str, Path]) -> None:
    with pytest.raises(VideoError) as e:
        sample_frames(clips["plain"], 4, 32, timeout=0.0)
    assert e.value.reason == "ffmpeg timed out"


def test_attached_cover_picture_is_not_the_video(tmp_path: Path, clips: dict[str, Path]) -> None:
    """A cover picture stored as the first video stream (disposition attached_pic) is skipped, as the
    command line's ``V:0`` skipped it: the samples are the clip's frames."""
    cover = tmp_path / "cover.png"
    ffmpeg("-f", "lavfi", "-i", "color=c=red:s=64x48", "-frames:v", "1", str(cover))
    out = tmp_path / "with_cover.mp4"
    ffmpeg(
        "-i",
        str(cover),
        "-i",
        str(clips["ramp"]),
        "-map",
        "0",
        "-map",
        "1",
        "-c",
        "copy",
        "-disposition:v:0",
        "attached_pic",
        str(out),
    )
    assert np.array_equal(sample_frames(out, 8, 16).frames, sample_frames(clips["ramp"], 8, 16).frames)


@pytest.mark.parametrize("max_fps", [None, 2.5])
def test_a_wrong_guess_gives_the_same_sample(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch, max_fps: float | None
) -> None:
    """When the picks guessed from the packets are not the decoded timeline's, the second decode converts
    exactly those: the sample is the same, bit for bit."""
    from discovla import sampling

    right = sample_frames(clips["ramp"], 4, 16, max_fps=max_fps)
    calls: list[int] = []
    real_decode = sampling._decode
    monkeypatch.setattr(sampling, "_guess", lambda *a: {-12345})
    monkeypatch.setattr(sampling, "_decode", lambda *a, **k: calls.append(1) or real_decode(*a, **k))
    wrong = sample_frames(clips["ramp"], 4, 16, max_fps=max_fps)
    assert len(calls) == 2
    assert np.array_equal(wrong.frames, right.frames) and np.array_equal(wrong.indices, right.indices)
    assert np.array_equal(wrong.timestamps, right.timestamps)


def test_failure_messages_are_the_libraries_words() -> None:
    """A reason carries the demuxer's message (never a pointer address or file name), skipping probing
    noise; else the error's own text."""
    from discovla.sampling import _message

    exc = OSError(1094995529, "Invalid data found when processing input")
    logs = [(24, "mov", "Format mov detected only with low score of 1, misdetection possible!\n")]
    assert _message(logs, exc) == "Invalid data found when processing input"
    assert _message([*logs, (16, "mov,mp4", "moov atom not found\n")], exc) == "moov atom not found"


def test_plan_follows_presentation_order_and_thins_on_real_pts() -> None:
    """The rule on a timeline given in decoding order: picks are decoding positions, indices presentation
    positions; of two frames with one pts the later is on display; max_fps keeps real pts."""
    from fractions import Fraction

    from discovla.timeline import plan, thin

    p = plan([0, 2, 1, 3], [1, 1, 1, 1], 4, Fraction(1, 10))
    assert p.picks == [0, 2, 1, 3] and p.indices == [0, 1, 2, 3] and p.pts == [0, 1, 2, 3]
    assert (p.source_frames, p.span) == (4, 4)
    dup = plan([0, 1, 1, 2], [1, 1, 1, 1], 3, Fraction(1, 10))
    assert dup.picks == [0, 2, 3] and dup.indices == [0, 2, 3]
    assert thin(list(range(10)), Fraction(1, 10), 2.5) == [0, 4, 8]
    thinned = plan(list(range(10)), [1] * 10, 4, Fraction(1, 10), max_fps=2.5)
    # the rule picks frames 1, 3, 6, 8; the nearest kept (0, 4, 8; ties: the later) are 0, 4, 8 and 8
    assert thinned.picks == [0, 4, 8, 8] and thinned.indices == [0, 4, 8, 8]


def test_sampling_in_threads_matches_one_at_a_time(clips: dict[str, Path], tmp_path: Path) -> None:
    """`discovla index --workers N` samples in threads: each thread scales with its own libswscale context
    (one shared context crashed the process) and the libraries' log level comes back afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    import av.logging

    big = make_testsrc(tmp_path / "big.mp4", "160x120", 10, 2.0, "-pix_fmt", "yuv420p")
    jobs = [(path, size) for path in (*clips.values(), big) for size in (24, 32, 48)] * 3
    want = [sample_frames(path, 4, size).frames for path, size in jobs]
    level = av.logging.get_level()
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda job: sample_frames(job[0], 4, job[1]).frames, jobs))
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    assert av.logging.get_level() == level


@pytest.mark.parametrize("max_fps", [None, 2.0, 7.0])
def test_b_frames_are_guessed_right_the_first_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_fps: float | None
) -> None:
    """A clip with B-frames (its packets out of presentation order), thinned by ``max_fps`` or not: the
    picks guessed from the packets are the decoded timeline's, so every frame is decoded once."""
    from discovla import sampling

    clip = make_testsrc(tmp_path / "b.mp4", "64x48", 30, 4.0, "-c:v", "libx264", "-bf", "3", "-g", "60")
    calls: list[int] = []
    real_decode = sampling._decode
    monkeypatch.setattr(sampling, "_decode", lambda *a, **k: calls.append(1) or real_decode(*a, **k))
    out = sample_frames(clip, 12, 16, max_fps=max_fps)
    assert len(calls) == 1 and out.frames.shape == (12, 16, 16, 3)
