"""Frame sampling with ffmpeg: decode one video once and choose F frames uniformly over its duration.

:func:`sample_frames` decodes every frame of a video once with ffmpeg (no ffprobe), and scales only the F
frames it keeps. Two ffmpeg runs:

1. a packet listing (``-c copy -f framecrc``: demuxing only, no decoding) gives every packet's pts, on
   which the rule below guesses the F picks;
2. the decode: the first video stream (attached cover pictures excluded) goes through ``showinfo`` (every
   decoded frame's integer pts, duration and the stream time base, printed on stderr: the exact timeline)
   -> ``select`` (the guessed picks, each within a quarter of a frame period) -> ``scale`` (shorter side to
   ``size``, bicubic) -> centre ``crop`` to ``size x size`` -> ``showinfo``, and out as raw RGB24 on a pipe.

The picks are then made again on the DECODED timeline; if one of them did not come out (packets that do
not all decode, variable frame rate, timestamps the demuxer and the decoder disagree on), the decode runs
once more keeping exactly those pts. A video whose timeline has missing or repeated pts, or on which
either run fails, is decoded in ONE pass that scales every frame (the one-pass path, also what ``max_fps``
uses; its errors are the reasons below). Every path gives the same frames, bit for bit: the timeline and
the rule are the same, and scaling is per frame, so a frame's pixels do not depend on which others were
kept. Scaling every decoded frame, not decoding, was most of the one pass's cost at 224 px: the two runs
take 0.3x (320x240 clips) to 0.5x (1280x720) of its CPU time (``benchmarks/real_videos.py``).

Sampling rule. Frame ``k`` is on display from its pts until the next frame's pts (the last frame for its
own duration). With ``start`` the first pts and ``span = last pts - start + one frame duration``, the F
target times are the centres of F equal segments of ``[start, start + span]``, and sample ``i`` is the
frame on display at target ``i`` (equivalently the frame whose display interval centre is nearest).
The arithmetic is done in exact fractions of the time base, so there are no float ties. A video with
fewer decodable frames than F repeats frames (``repeated=True``); a 1-frame video repeats it F times.
For a constant-rate video the rule is symmetric under time reversal whenever no target falls exactly on
a frame boundary (e.g. 20 frames and F = 8), so a video and its reversal get the same frame set.

Memory: F frames at the target size. The one-pass path holds all decoded frames at the target
size (``size*size*3`` bytes each; a 30 s, 30 fps clip at 224 px is about 135 MB). ``max_fps`` pre-thins
long clips before scaling with ffmpeg's ``select`` filter (in one pass), which keeps the frames' real pts
(unlike ``fps=``, which retimes onto a grid): a second ``showinfo`` before the thinning still sees every
decoded frame, so ``source_frames`` and ``duration`` stay exact; each sample is then the kept frame nearest
to the frame the rule above picks.

Errors raise :class:`VideoError` with a short, stable ``reason``: ``missing file``, ``empty file``,
``unreadable file``, ``not a video: <ffmpeg's message>`` (also a truncated mp4 whose moov atom is gone),
``no video stream`` (e.g. audio only), ``no decodable frames``, ``too many decode errors`` (ffmpeg gives up
when over 2/3 of the packets fail), ``ffmpeg timed out``, ``ffmpeg failed: <first meaningful stderr
line>``. A truncated file that still decodes some frames without tripping ffmpeg's error-rate limit is
sampled from its decodable part (``source_frames`` and ``duration`` show how much was left).

This module knows nothing of the pipeline's files: :mod:`discovla.artifacts.frames` runs it over a dataset
and writes the ``frames`` store.
"""

from __future__ import annotations

import bisect
import functools
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import ffmpeg
import numpy as np

from discovla.ffmpeg import ffmpeg_exe


class VideoError(Exception):
    """A video that cannot be sampled; ``reason`` is short and stable (see the module docstring)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SampledVideo:
    """F frames sampled from one video.

    ``frames``: uint8 ``[F, size, size, 3]`` RGB. ``timestamps``: float64 ``[F]``, the real pts (seconds) of
    the chosen frames. ``indices``: int64 ``[F]``, which decoded frame (0-based, presentation order) each
    sample is. ``source_frames``: number of decodable frames. ``duration``: seconds covered by them
    (last pts - first pts + one frame duration). ``repeated``: some decoded frame was used twice.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    indices: np.ndarray
    source_frames: int
    duration: float
    repeated: bool


# --------------------------------------------------------------------------------------------- ffmpeg I/O

_PREFIX_RE = re.compile(r"^(?:\[[^\]]*@ 0x[0-9a-fA-F]+\]\s*)+")
_SHOWINFO_RE = re.compile(r"^\[Parsed_showinfo_(\d+) @ [^\]]*\]\s*(.*)$")
_FRAME_RE = re.compile(r"^n:\s*(\d+)\s+pts:\s*(\S+)\s+pts_time:\S+(?:\s+duration:\s*(\S+))?")
_CONFIG_RE = re.compile(r"^config in time_base:\s*(\d+)/(\d+), frame_rate:\s*(\d+)/(\d+)")
_ERROR_WORDS = re.compile(r"error|invalid|fail|cannot|unable|not found|no such|denied|corrupt", re.I)


@dataclass
class _Stream:
    """What one ``showinfo`` instance saw: time base, frame rate, per-frame pts and durations."""

    time_base: Fraction | None = None
    frame_rate: Fraction | None = None
    pts: list[int | None] = field(default_factory=list)
    durations: list[int] = field(default_factory=list)


def _parse_showinfo(stderr: str) -> dict[int, _Stream]:
    """Group showinfo lines of stderr by filter instance number."""
    streams: dict[int, _Stream] = {}
    for line in stderr.splitlines():
        m = _SHOWINFO_RE.match(line)
        if not m:
            continue
        info = streams.setdefault(int(m.group(1)), _Stream())
        body = m.group(2)
        if fm := _FRAME_RE.match(body):
            info.pts.append(None if fm.group(2) == "NOPTS" else int(fm.group(2)))
            dur = fm.group(3) or ""  # older ffmpeg prints no duration: then the median pts step is used
            info.durations.append(int(dur) if dur.lstrip("-").isdigit() else 0)
        elif (cm := _CONFIG_RE.match(body)) and info.time_base is None:
            num, den, rn, rd = (int(g) for g in cm.groups())
            info.time_base = Fraction(num, den) if den else None
            info.frame_rate = Fraction(rn, rd) if rd and rn else None
    return streams


def _clean(line: str) -> str:
    """Strip ffmpeg's ``[name @ 0xADDR]`` prefix (addresses change every run)."""
    return _PREFIX_RE.sub("", line.strip()).strip()


def _classify_failure(stderr: str, frames_decoded: int) -> str:
    """Turn a failed ffmpeg run's stderr into a stable reason."""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(" ")]
    if any("matches no streams" in ln for ln in lines):
        return "no video stream"
    open_at = next((i for i, ln in enumerate(lines) if "Error opening input:" in ln), None)
    if open_at is not None:
        message = _clean(lines[open_at]).split("Error opening input:", 1)[1].strip()
        if "Permission denied" in message:
            return "unreadable file"
        if "No such file" in message:
            return "missing file"
        demuxer = [ln for ln in lines[:open_at] if ln.startswith("[in#")]
        details = [_clean(ln) for ln in demuxer if "misdetection possible" not in ln]
        return f"not a video: {details[0] if details else message}"
    if frames_decoded == 0:
        return "no decodable frames"
    if any("Decode error rate" in ln for ln in lines):
        return "too many decode errors"
    meaningful = [_clean(ln) for ln in lines if _ERROR_WORDS.search(ln)]
    detail = meaningful[0] if meaningful else (_clean(lines[-1]) if lines else "no output")
    return f"ffmpeg failed: {detail}"


@functools.cache
def _showinfo_args(exe: str) -> dict[str, Any]:
    """``showinfo`` options: no per-frame plane checksums where this ffmpeg can switch them off (they cost
    as much as decoding on large frames, and only the timing is read)."""
    try:
        text = subprocess.run(
            [exe, "-hide_banner", "-h", "filter=showinfo"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"checksum": 0} if re.search(r"^\s*checksum\b", text, re.M) else {}


def _scaled(stream: Any, size: int, info: dict[str, Any]) -> Any:
    return (
        stream.filter("scale", w=size, h=size, force_original_aspect_ratio="increase", flags="bicubic")
        .filter("crop", size, size)
        .filter("showinfo", **info)
    )


def _build_command(path: str, size: int, max_fps: float | None, threads: int) -> Any:
    """The one-pass command: every decoded frame is scaled and piped out."""
    info = _showinfo_args(ffmpeg_exe())
    stream = ffmpeg.input(path, threads=threads)["V:0"]
    if max_fps is not None:
        gap = 1.0 / max_fps - 1e-6  # epsilon: ffmpeg's float t differences are not exact
        stream = stream.filter("showinfo", **info).filter(
            "select", f"isnan(prev_selected_t)+gte(t-prev_selected_t,{gap:.9f})"
        )
    stream = _scaled(stream, size, info)
    return stream.output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough")


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise VideoError("ffmpeg timed out")
    return left


def _communicate(proc: subprocess.Popen, timeout: float) -> tuple[bytes, bytes]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise VideoError("ffmpeg timed out") from None


def _run_command(command: Any, threads: int, timeout: float) -> tuple[bytes, str]:
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-filter_threads", str(threads)]
    proc = command.run_async(cmd=cmd, pipe_stdout=True, pipe_stderr=True)
    out, err = _communicate(proc, timeout)
    stderr = err.decode("utf-8", errors="replace")
    if proc.returncode != 0:
        decoded = max((len(v.pts) for v in _parse_showinfo(stderr).values()), default=0)
        raise VideoError(_classify_failure(stderr, decoded))
    return out, stderr


def _run_ffmpeg(
    path: str, size: int, max_fps: float | None, threads: int, timeout: float
) -> tuple[bytes, str]:
    return _run_command(_build_command(path, size, max_fps, threads), threads, timeout)


_NOPTS = -(2**63)
_PACKET_RE = re.compile(r"^\s*0,\s*(-?\d+),\s*(-?\d+),\s*(-?\d+),")
_TB_RE = re.compile(r"^#tb 0:\s*(\d+)/(\d+)")


def _list_packets(path: str, timeout: float) -> tuple[list[int], list[int], Fraction] | None:
    """Pts (dts where a packet has none), durations and time base of the first video stream's packets,
    read without decoding; None when ffmpeg cannot list them."""
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-loglevel", "error"]
    cmd += ["-i", path, "-map", "0:V:0", "-c", "copy", "-f", "framecrc", "-"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out, _ = _communicate(proc, timeout)
    if proc.returncode != 0:
        return None
    tb: Fraction | None = None
    pts: list[int] = []
    durs: list[int] = []
    for line in out.decode("ascii", errors="replace").splitlines():
        if m := _PACKET_RE.match(line):
            dts, p, dur = (int(g) for g in m.groups())
            p = p if p != _NOPTS else dts
            if p == _NOPTS:
                return None
            pts.append(p)
            durs.append(max(dur, 0))
        elif (tm := _TB_RE.match(line)) and int(tm.group(2)):
            tb = Fraction(int(tm.group(1)), int(tm.group(2)))
    if tb is None or not pts:
        return None
    return pts, durs, tb


# --------------------------------------------------------------------------------------------- sampling


def _timeline(info: _Stream) -> tuple[list[int], list[int], Fraction]:
    """Integer pts, durations and the time base of one showinfo stream (NOPTS: fall back to frame rate)."""
    tb = info.time_base
    pts, durs = info.pts, info.durations
    if tb is None or any(p is None for p in pts):
        rate = info.frame_rate or Fraction(25)
        return list(range(len(pts))), [1] * len(pts), 1 / rate
    return [int(p) for p in pts], list(durs), tb


def _span(pts: list[int], durs: list[int]) -> tuple[int, int]:
    """(start, span) of sorted pts: last - first + one frame duration."""
    last = durs[-1] if durs and durs[-1] > 0 else 0
    if last <= 0 and len(pts) > 1:
        diffs = np.diff(np.asarray(pts, dtype=np.int64))
        diffs = diffs[diffs > 0]
        last = int(np.median(diffs)) if diffs.size else 0
    return pts[0], pts[-1] - pts[0] + last


def choose_frames(pts: list[int], num_frames: int, start: int, span: int) -> list[int]:
    """Indices into sorted ``pts`` of the frames on display at the centres of ``num_frames`` equal segments
    of ``[start, start + span]`` (exact rational arithmetic; a target before the first pts takes frame 0)."""
    targets = (Fraction(start) + Fraction((2 * i + 1) * span, 2 * num_frames) for i in range(num_frames))
    return [max(0, bisect.bisect_right(pts, t) - 1) for t in targets]


def _nearest(sorted_pts: list[int], value: int) -> int:
    """Index of the entry of ``sorted_pts`` nearest to ``value`` (ties: the later one)."""
    i = bisect.bisect_left(sorted_pts, value)
    if i == len(sorted_pts):
        return i - 1
    if i > 0 and value - sorted_pts[i - 1] < sorted_pts[i] - value:
        return i - 1
    return i


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

    Shorter side scaled to ``size`` (bicubic), then centre-cropped. ``max_fps`` pre-thins long clips (see
    the module docstring); ``threads`` is ffmpeg's decoder/filter thread count (1 when workers run in
    parallel); ``timeout`` (seconds) bounds all ffmpeg runs together. Raises :class:`VideoError` for
    anything that cannot be sampled.
    """
    if num_frames < 1 or size < 1:
        raise ValueError(f"num_frames and size must be >= 1, got {num_frames} and {size}")
    if max_fps is not None and max_fps <= 0:
        raise ValueError(f"max_fps must be > 0, got {max_fps}")
    p = Path(path)
    if not p.is_file():
        raise VideoError("missing file")
    if p.stat().st_size == 0:
        raise VideoError("empty file")
    if not os.access(p, os.R_OK):
        raise VideoError("unreadable file")
    src = f"file:{p.absolute()}"  # "file:" so that a name with a colon is never taken for a protocol
    deadline = time.monotonic() + timeout
    if max_fps is None:
        sampled = _sample_two_pass(src, num_frames, size, threads, deadline)
        if sampled is not None:
            return sampled
    return _sample_one_pass(src, num_frames, size, max_fps, threads, _remaining(deadline))


def _sorted_timeline(pts: list[int], durs: list[int]) -> tuple[list[int], list[int]] | None:
    """``pts`` and ``durs`` in pts order; None when two frames share a pts (left to the one pass)."""
    pairs = sorted(zip(pts, durs, strict=True))
    ordered = [a for a, _ in pairs]
    if any(a == b for a, b in zip(ordered, ordered[1:], strict=False)):
        return None
    return ordered, [d for _, d in pairs]


def _guess_select(pts: list[int], durs: list[int], tb: Fraction, num_frames: int) -> str:
    """``select`` expression keeping the frames the rule picks on the packet timeline: a window of a
    quarter of the mean frame period either side of each (in seconds: the decoder's time base may differ
    from the packets')."""
    start, span = _span(pts, durs)
    margin = float(Fraction(max(span, 1), 4 * len(pts)) * tb)
    centres = sorted({float(pts[j] * tb) for j in choose_frames(pts, num_frames, start, span)})
    return _any_of([f"between(t,{c - margin:.6f},{c + margin:.6f})" for c in centres])


def _any_of(terms: list[str]) -> str:
    """The sum of ``terms`` as a balanced tree: ffmpeg refuses a flat sum of more than 100 terms."""
    if len(terms) == 1:
        return terms[0]
    half = len(terms) // 2
    return f"({_any_of(terms[:half])})+({_any_of(terms[half:])})"


def _select_pass(
    src: str, size: int, expr: str, threads: int, deadline: float
) -> tuple[_Stream, _Stream, bytes] | None:
    """Decode every frame, scale those ``expr`` selects: (every decoded frame, the kept ones, their RGB
    bytes), or None when ffmpeg fails or its output does not add up."""
    info = _showinfo_args(ffmpeg_exe())
    stream = ffmpeg.input(src, threads=threads)["V:0"].filter("showinfo", **info).filter("select", expr)
    command = _scaled(stream, size, info).output(
        "pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough"
    )
    try:
        raw, stderr = _run_command(command, threads, _remaining(deadline))
    except VideoError as exc:
        if exc.reason == "ffmpeg timed out":
            raise
        return None
    streams = _parse_showinfo(stderr)
    if len(streams) != 2:
        return None
    every, kept = streams[min(streams)], streams[max(streams)]
    if every.time_base is None or kept.time_base != every.time_base or not every.pts:
        return None
    if None in every.pts or None in kept.pts or len(raw) != len(kept.pts) * size * size * 3:
        return None
    return every, kept, raw


def _pick(every: _Stream, kept: _Stream, raw: bytes, num_frames: int, size: int) -> SampledVideo | list[int]:
    """The sample, by the rule on the decoded timeline ``every``, when each frame it picks is in ``kept``;
    else the pts it picks. Same result as the one pass: same timeline, same rule, same per-frame scaling."""
    tb = every.time_base
    assert tb is not None
    timeline = _sorted_timeline([int(q) for q in every.pts if q is not None], every.durations)
    if timeline is None:
        return []
    all_pts, all_durs = timeline
    start, span = _span(all_pts, all_durs)
    wanted = [all_pts[j] for j in choose_frames(all_pts, num_frames, start, span)]
    position = {q: i for i, q in enumerate(kept.pts)}
    if len(position) != len(kept.pts) or any(w not in position for w in wanted):
        return wanted
    frames = np.frombuffer(raw, dtype=np.uint8).reshape(len(kept.pts), size, size, 3)
    return SampledVideo(
        frames=frames[[position[w] for w in wanted]].copy(),
        timestamps=np.array([float(w * tb) for w in wanted], dtype=np.float64),
        indices=np.array([bisect.bisect_left(all_pts, w) for w in wanted], dtype=np.int64),
        source_frames=len(all_pts),
        duration=float(span * tb),
        repeated=len(set(wanted)) < num_frames,
    )


def _sample_two_pass(
    src: str, num_frames: int, size: int, threads: int, deadline: float
) -> SampledVideo | None:
    """List the packets, then decode every frame but scale only the guessed picks; when the decoded
    timeline picks other frames, decode once more keeping exactly those. None: use the one pass."""
    listed = _list_packets(src, _remaining(deadline))
    if listed is None:
        return None
    packet_pts, packet_durs, packet_tb = listed
    ordered = _sorted_timeline(packet_pts, packet_durs)
    if ordered is None:
        return None
    expr = _guess_select(*ordered, packet_tb, num_frames)
    for _ in range(2):
        got = _select_pass(src, size, expr, threads, deadline)
        if got is None:
            return None
        picked = _pick(*got, num_frames, size)
        if isinstance(picked, SampledVideo):
            return picked
        if not picked:
            return None
        expr = _any_of([f"eq(pts,{q})" for q in sorted(set(picked))])  # exact: the decoded pts themselves
    return None


def _sample_one_pass(
    src: str, num_frames: int, size: int, max_fps: float | None, threads: int, timeout: float
) -> SampledVideo:
    """Decode and scale every frame (thinned to ``max_fps`` first if given), then choose."""
    raw, stderr = _run_ffmpeg(src, size, max_fps, threads, timeout)

    streams = _parse_showinfo(stderr)
    if not streams or not streams[max(streams)].pts:
        raise VideoError("no decodable frames")
    kept_pts, kept_durs, tb = _timeline(streams[max(streams)])
    frame_bytes = size * size * 3
    if len(raw) != len(kept_pts) * frame_bytes:
        raise VideoError(f"ffmpeg failed: {len(raw)} output bytes for {len(kept_pts)} frames")
    frames = np.frombuffer(raw, dtype=np.uint8).reshape(len(kept_pts), size, size, 3)

    order = sorted(range(len(kept_pts)), key=lambda i: kept_pts[i])  # stable; decoders emit in pts order
    kept_sorted = [kept_pts[i] for i in order]
    all_pts, all_durs = kept_sorted, [kept_durs[i] for i in order]
    if max_fps is not None:  # the first showinfo saw every decoded frame
        all_pts, all_durs, _ = _timeline(streams[min(streams)])
        pairs = sorted(zip(all_pts, all_durs, strict=True))
        all_pts, all_durs = [a for a, _ in pairs], [d for _, d in pairs]
    start, span = _span(all_pts, all_durs)
    wanted = [all_pts[j] for j in choose_frames(all_pts, num_frames, start, span)]
    chosen = [_nearest(kept_sorted, w) for w in wanted]  # identity when nothing was thinned out
    picked = [order[c] for c in chosen]
    indices = [bisect.bisect_left(all_pts, kept_sorted[c]) for c in chosen]
    return SampledVideo(
        frames=frames[picked].copy(),
        timestamps=np.array([float(kept_sorted[c] * tb) for c in chosen], dtype=np.float64),
        indices=np.array(indices, dtype=np.int64),
        source_frames=len(all_pts),
        duration=float(span * tb),
        repeated=len(set(chosen)) < num_frames,
    )
