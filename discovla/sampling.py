"""Frame sampling: decode one video in process (PyAV, FFmpeg's libraries) and keep F frames.

:func:`sample_frames` opens the video once, demuxes the first video stream (attached cover pictures
excluded) into memory without decoding, guesses the F picks from the packets' pts with the rule of
:mod:`discovla.timeline`, then decodes every packet once and converts (scale + crop to RGB) only the
frames it guessed. The rule is then applied again on the DECODED timeline (every frame the decoder gave:
its pts and duration), which is what defines the sample; when a pick was not converted (packets that do
not decode, timestamps the demuxer and the decoder disagree on, frames without pts), the kept packets are
decoded once more converting exactly those frames. Every frame is decoded because the timeline is the
decoded one (a packet that fails to decode is no frame); with 12 samples nearly every group of pictures
holds one anyway, so decoding only those GOPs would save a few percent (``benchmarks/real_videos.py``).

Scaling: shorter side to ``size`` (libswscale bicubic, the output size rounded as ffmpeg's
``force_original_aspect_ratio=increase``), then a centre crop to ``size x size`` (offsets rounded half to
even). A frame's pixels depend only on that frame, so they do not depend on which path produced them.

Timestamps are the frames' pts in seconds from the file's start time (as the ffmpeg command line counts
them); a stream whose decoded frames lack pts is put on a grid of its frame rate. Memory: the stream's
compressed packets (a few MB for a 30 s clip) and the F converted frames.

Errors raise :class:`VideoError` with a short, stable ``reason``: ``missing file``, ``empty file``,
``unreadable file``, ``not a video: <the demuxer's message>`` (also a truncated mp4 whose moov atom is
gone), ``no video stream`` (e.g. audio only), ``no decodable frames``, ``too many decode errors`` (over 2/3
of the decode calls failed, ffmpeg's own limit), ``ffmpeg timed out`` (``timeout`` bounds the whole
sampling), ``ffmpeg failed: <message>`` (any other decoder failure). A truncated file that still decodes
some frames is sampled from its decodable part (``source_frames`` and ``duration`` show how much was
left).

This module knows nothing of the pipeline's files: :mod:`discovla.extraction` runs it over a dataset and
writes the ``frames`` store.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.logging
import av.video.reformatter
import numpy as np

from discovla import locations
from discovla.timeline import Plan, SampledVideo, VideoError, choose_frames, plan

__all__ = ["SampledVideo", "VideoError", "choose_frames", "sample_frames", "to_rgb"]

MAX_ERROR_RATE = 2 / 3  # ffmpeg's default -max_error_rate


def scaled_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Width and height with the shorter side ``size``: ffmpeg's ``scale=size:size:
    force_original_aspect_ratio=increase`` (``av_rescale``: rounded to nearest)."""
    tmp_w = (size * width + height // 2) // height
    tmp_h = (size * height + width // 2) // width
    return max(size, tmp_w), max(size, tmp_h)


# One scaler per thread: libswscale keeps its context (filter tables: the costly part of scaling a
# single frame) while the source size and format stay the same. A context is not safe to share between
# threads (`discovla index --workers N` samples in threads): sharing one crashed the process.
_LOCAL = threading.local()


def to_rgb(frame: Any, size: int) -> np.ndarray:
    """A decoded ``av.VideoFrame`` as uint8 ``[size, size, 3]`` RGB: shorter side to ``size`` (bicubic),
    centre crop."""
    reformatter = getattr(_LOCAL, "reformatter", None)
    if reformatter is None:
        reformatter = _LOCAL.reformatter = av.video.reformatter.VideoReformatter()
    w, h = scaled_size(frame.width, frame.height, size)
    img = reformatter.reformat(frame, w, h, "rgb24", interpolation="BICUBIC", threads=1).to_ndarray()
    x, y = round((w - size) / 2), round((h - size) / 2)  # as ffmpeg's crop: ties to even
    return np.ascontiguousarray(img[y : y + size, x : x + size])


def _check_deadline(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise VideoError("ffmpeg timed out")


def _message(logs: list[tuple[int, str, str]], exc: Exception) -> str:
    """The error the libraries logged with ``exc`` (the demuxer's own words), else the first one captured,
    else the exception's."""
    own = getattr(exc, "log", None)
    for level, _, text in [*([own] if own else []), *logs]:
        line = text.strip()
        if level <= av.logging.ERROR and line and "misdetection possible" not in line:
            return line
    return getattr(exc, "strerror", None) or str(exc).split(":", 1)[0]


def _open(src: Any, logs: list[tuple[int, str, str]]) -> tuple[Any, Any]:
    """The container and its first video stream that is not an attached picture (``logs``: the messages
    captured so far, for the reason)."""
    try:
        container = av.open(src, metadata_errors="ignore")
    except FileNotFoundError:
        raise VideoError("missing file") from None
    except PermissionError:
        raise VideoError("unreadable file") from None
    except av.error.FFmpegError as exc:
        raise VideoError(f"not a video: {_message(logs, exc)}") from None
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        container.close()
        raise VideoError("no video stream")
    return container, streams[0]


def _demux(container: Any, stream: Any, deadline: float) -> list[Any]:
    """The stream's packets in decoding order (no decoding); a read error ends the list (a truncated file
    is sampled from what can be read)."""
    packets = []
    try:
        for p in container.demux(stream):
            if p.size:
                packets.append(p)
            if len(packets) % 64 == 0:
                _check_deadline(deadline)
    except av.error.FFmpegError:
        pass
    return packets


def _guess(packets: list[Any], num_frames: int, time_base: Fraction, max_fps: float | None) -> set[int]:
    """The pts the rule picks on the packet timeline (pts, else dts; discarded packets left out), put in
    presentation order first: the decoder gives frames in that order, and ``max_fps`` thins a timeline in
    the order it is given, so a guess from packets in decoding order (B-frames) would thin other frames
    than the decoded timeline does and cost a second decode."""
    kept = [p for p in packets if not p.is_discard]
    pts = [p.pts if p.pts is not None else p.dts for p in kept]
    if not pts or any(q is None for q in pts):
        return set()
    order = sorted(range(len(pts)), key=lambda i: pts[i])
    durs = [int(kept[i].duration or 0) for i in order]
    return set(plan([pts[i] for i in order], durs, num_frames, time_base, max_fps).pts)


@dataclass
class _Decoded:
    """One decode of every packet: each frame's pts and duration in output order, the converted ones."""

    pts: list[int | None] = field(default_factory=list)
    durations: list[int] = field(default_factory=list)
    rgb: dict[int, np.ndarray] = field(default_factory=dict)
    errors: int = 0


def _decode(
    stream: Any, packets: list[Any], size: int, deadline: float, *, pts: set[int], positions: set[int]
) -> _Decoded:
    """Decode every packet (and drain), converting frames whose pts is in ``pts`` or whose output position
    is in ``positions``; failed decode calls are counted, not raised."""
    cc = stream.codec_context
    out = _Decoded()
    for p in [*packets, None]:
        try:
            frames = cc.decode(p)
        except av.error.EOFError:
            frames = []
        except av.error.FFmpegError:
            out.errors += 1
            continue
        for f in frames:
            pos = len(out.pts)
            out.pts.append(f.pts)
            out.durations.append(int(f.duration or 0))
            if pos in positions or (f.pts is not None and f.pts in pts):
                out.rgb[pos] = to_rgb(f, size)
        _check_deadline(deadline)
    return out


def _timeline(
    decoded: _Decoded, stream: Any, start_time: int | None
) -> tuple[list[int], list[int], Fraction]:
    """Integer pts from the file's start time, durations and time base of the decoded frames; frames
    without pts: a grid of the stream's frame rate."""
    if any(q is None for q in decoded.pts):
        rate = Fraction(stream.average_rate or stream.guessed_rate or 25)
        return list(range(len(decoded.pts))), [1] * len(decoded.pts), 1 / rate
    tb = Fraction(stream.time_base)
    offset = 0
    if start_time is not None:  # av_rescale_q(start_time, AV_TIME_BASE_Q, tb): to nearest, ties away
        exact = Fraction(start_time, 1_000_000) / tb
        offset = int(abs(exact) + Fraction(1, 2)) * (1 if exact >= 0 else -1)
    return [int(q) - offset for q in decoded.pts if q is not None], list(decoded.durations), tb


def sample_frames(
    path: str | Path,
    num_frames: int,
    size: int,
    *,
    max_fps: float | None = None,
    threads: int = 1,
    timeout: float = 600.0,
) -> SampledVideo:
    """Sample ``num_frames`` frames uniformly over the duration of ``path``, as ``size x size`` RGB.

    ``path``: a local file or a URI of one of pyarrow's filesystems (``s3://...``; :mod:`discovla.locations`),
    decoded in place.

    Shorter side scaled to ``size`` (bicubic), then centre-cropped. ``max_fps`` pre-thins long clips (see
    :mod:`discovla.timeline`); ``threads`` is the decoder's thread count (1 when workers run in parallel);
    ``timeout`` (seconds) bounds the whole sampling. Raises :class:`VideoError` for anything that cannot
    be sampled.
    """
    if num_frames < 1 or size < 1:
        raise ValueError(f"num_frames and size must be >= 1, got {num_frames} and {size}")
    if max_fps is not None and max_fps <= 0:
        raise ValueError(f"max_fps must be > 0, got {max_fps}")
    try:
        found = locations.stat(path)  # a local path, or a URI of one of pyarrow's filesystems
    except locations.LocationError as exc:
        raise VideoError(f"unreadable file: {exc}") from None
    if found is None:
        raise VideoError("missing file")
    if found[0] == 0:
        raise VideoError("empty file")
    if not locations.is_uri(path) and not os.access(path, os.R_OK):
        raise VideoError("unreadable file")
    deadline = time.monotonic() + timeout
    try:
        with _quiet_libraries(), av.logging.Capture(local=True) as logs, locations.open_video(path) as src:
            container, stream = _open(src, logs)
            with container:
                return _sample(container, stream, num_frames, size, max_fps, threads, deadline)
    except locations.LocationError as exc:
        raise VideoError(f"unreadable file: {exc}") from None
    except (av.error.FFmpegError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise VideoError(f"ffmpeg failed: {detail}") from None


_LOG_LOCK = threading.Lock()
_LOG_USERS = [0, None]  # samplings running, the log level before the first of them


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """The libraries' log level at ERROR while any sampling runs (their messages go to the thread's
    ``Capture``, never to stderr), and back to what it was when the last one ends: the level is global,
    and samplings may overlap in threads."""
    with _LOG_LOCK:
        if _LOG_USERS[0] == 0:
            _LOG_USERS[1] = av.logging.get_level()
            av.logging.set_level(av.logging.ERROR)
        _LOG_USERS[0] += 1
    try:
        yield
    finally:
        with _LOG_LOCK:
            _LOG_USERS[0] -= 1
            if _LOG_USERS[0] == 0:
                av.logging.set_level(_LOG_USERS[1])


def _sample(
    container: Any,
    stream: Any,
    num_frames: int,
    size: int,
    max_fps: float | None,
    threads: int,
    deadline: float,
) -> SampledVideo:
    stream.codec_context.thread_count = threads
    packets = _demux(container, stream, deadline)
    guess = _guess(packets, num_frames, Fraction(stream.time_base), max_fps)
    decoded = _decode(stream, packets, size, deadline, pts=guess, positions=set())
    if not decoded.pts:
        raise VideoError("no decodable frames")
    if decoded.errors > MAX_ERROR_RATE * (decoded.errors + len(decoded.pts)):
        raise VideoError("too many decode errors")
    pts, durs, tb = _timeline(decoded, stream, container.start_time)
    chosen: Plan = plan(pts, durs, num_frames, tb, max_fps)
    need = set(chosen.picks)
    if not need.issubset(decoded.rgb):  # the guess missed: decode again, converting exactly the picks
        stream.codec_context.flush_buffers()
        again = _decode(stream, packets, size, deadline, pts=set(), positions=need)
        if again.pts != decoded.pts or not need.issubset(again.rgb):
            raise VideoError("ffmpeg failed: a second decode gave other frames")
        decoded = again
    return SampledVideo(
        frames=np.stack([decoded.rgb[i] for i in chosen.picks]),
        timestamps=np.array([float(q * tb) for q in chosen.pts], dtype=np.float64),
        indices=np.array(chosen.indices, dtype=np.int64),
        source_frames=chosen.source_frames,
        duration=float(chosen.span * tb),
        repeated=len(set(chosen.picks)) < num_frames,
    )
