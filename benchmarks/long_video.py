"""Benchmark: the frames sampler on a long clip (ActivityNet's videos run for minutes).

    python benchmarks/long_video.py                       # a 3-minute clip at 320x240 and 1280x720, ~3 min
    python benchmarks/long_video.py --seconds 60 --sizes 320x240

Encodes a ``--seconds`` clip per size with ffmpeg (H.264, 30 fps, the encoder's default group of pictures
of 250 frames, as most web video), then times :func:`discovla.sampling.sample_frames` on it for the
frame counts of ``--frames`` (12: MSRVTT, MSVD, LSMDC; 64: DiDeMo, ActivityNet), with ``max_fps`` off
and at 2, one decoder thread (as the frames stage's workers run). Also times a decode of every frame
without conversion, the floor of a sampler that decodes the whole stream. Best of ``--repeats``.
Writes ``benchmarks/results/long_video.json`` (machine, command line, seconds per case).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import torch
import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts

from train_step import device_name  # noqa: E402

from discovla.ffmpeg import ffmpeg_exe  # noqa: E402
from discovla.io import write_json  # noqa: E402
from discovla.sampling import sample_frames  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "long_video.json"


def encode(path: Path, seconds: float, size: str) -> None:
    src = f"testsrc2=size={size}:rate=30:duration={seconds}"
    cmd = [
        ffmpeg_exe(),
        "-v",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        src,
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
    ]
    subprocess.run([*cmd, "-pix_fmt", "yuv420p", str(path)], check=True, timeout=1800)


def decode_all(path: Path) -> tuple[float, int]:
    """Seconds to decode every frame (no conversion), and the frame count."""
    t0 = time.perf_counter()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        n = sum(1 for _ in c.decode(s))
    return time.perf_counter() - t0, n


def best(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(
    seconds: float = typer.Option(180.0, help="Clip length in seconds."),
    sizes: str = typer.Option("320x240,1280x720", help="Comma-separated WxH of the clips."),
    frames: str = typer.Option("12,64", help="Comma-separated frame counts to sample."),
    out_size: int = typer.Option(224, help="Sampled frame size (frames.size)."),
    repeats: int = typer.Option(2, help="Best of this many runs per case."),
    out: Path = typer.Option(OUT, help="Result JSON."),
) -> None:
    """Time the frames sampler on a long clip (see the module docstring)."""
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes.split(","):
            clip = Path(tmp) / f"long-{size}.mp4"
            t0 = time.perf_counter()
            encode(clip, seconds, size)
            print(f"{size}: encoded {seconds:.0f} s in {time.perf_counter() - t0:.1f} s", flush=True)
            floor, n = min((decode_all(clip) for _ in range(repeats)), key=lambda r: r[0])
            row: dict[str, Any] = {
                "size": size,
                "source_frames": n,
                "decode_all_s": round(floor, 3),
                "cases": [],
            }
            for f in (int(x) for x in frames.split(",")):
                for max_fps in (None, 2.0):
                    s = best(lambda c=clip, f=f, m=max_fps: sample_frames(c, f, out_size, max_fps=m), repeats)
                    row["cases"].append(
                        {
                            "frames": f,
                            "max_fps": max_fps,
                            "seconds": round(s, 3),
                            "x_decode_all": round(s / floor, 2),
                        }
                    )
                    print(
                        f"{size}: F={f} max_fps={max_fps}: {s:.2f} s ({s / floor:.2f}x decode-all)",
                        flush=True,
                    )
            results.append(row)
    write_json(
        out,
        {
            "machine": device_name(torch.device("cpu")),
            "command": "python " + shlex.join(sys.argv),
            "seconds_of_video": seconds,
            "decoder_threads": 1,
            "results": results,
        },
    )
    print(f"-> {out}")


if __name__ == "__main__":
    typer.run(main)
