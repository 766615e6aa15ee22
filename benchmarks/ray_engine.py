"""Benchmark: the local and the ray engine of the frames and captions stages on the same clips.

\b
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/ray_engine.py --root data/shapes --clips 200 \\
        --captioner models/tiny-blip --num-cpus 2

Both engines run the stages' own functions (:func:`discovla.extraction.extract_frames`,
:func:`discovla.captioning.make_captions`) on the first ``--clips`` videos of the dataset, into scratch
directories, and the outputs are compared byte for byte. Ray is started once (``--num-cpus`` CPUs, no
dashboard) and its start-up is timed apart; each ray configuration runs ``--repeats`` times:
``overhead_ratio`` is the last run's wall-clock time over the local engine's (Ray up, its worker processes
started: the per-run cost of scheduling, object transport and part files), ``overhead_ratio_first_run``
the first one's (worker processes started and their imports), ``overhead_ratio_with_start`` adds Ray's
start-up to it (what one stage run on a fresh local Ray costs; a running cluster has no start-up). The
frames stage runs locally with ``--num-cpus`` worker processes, on Ray with one task per part; captioning
locally on one device (torch threads as set by OMP_NUM_THREADS) and on Ray with 1 and with ``--num-cpus``
captioner actors. Results go to ``--out``; nothing here is a test (no timing is asserted).
"""

from __future__ import annotations

import filecmp
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

from discovla.captioning import make_captions
from discovla.data.registry import load_dataset
from discovla.engines import EngineParams
from discovla.extraction import extract_frames
from discovla.io import write_json


def _same(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        filecmp.cmp(a / n, b / n, shallow=False) for n in names
    )


def main(
    root: Path = typer.Option(Path("data/shapes"), help="Shapes world (dataset root)."),
    clips: int = typer.Option(200, help="First N videos of the dataset."),
    captioner: str = typer.Option("models/tiny-blip", help="Captioner (BLIP directory or hub id); '' skips."),
    num_cpus: int = typer.Option(2, help="Local Ray CPUs = local frames workers = most captioner actors."),
    frames: int = typer.Option(8, help="Frames per clip."),
    size: int = typer.Option(32, help="Frame size."),
    batch: int = typer.Option(128, help="Captioner batch."),
    part_frames: int = typer.Option(512, help="engine.part_frames for captions (parts run in parallel)."),
    repeats: int = typer.Option(2, help="Runs of each ray configuration (the last one is reported)."),
    out: Path = typer.Option(Path("benchmarks/results/ray_engine.json"), help="Results JSON."),
) -> None:
    import ray

    videos = load_dataset("shapes", root).videos.iloc[:clips]
    tmp = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    result: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/ray_engine.py", *map(shlex.quote, sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "ray": ray.__version__},
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "load_avg_before": list(os.getloadavg()),
        "clips": len(videos),
        "params": {
            "frames": frames,
            "size": size,
            "num_cpus": num_cpus,
            "batch": batch,
            "repeats": repeats,
            "part_frames": part_frames,
        },
    }
    t = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    result["ray_start_s"] = round(time.perf_counter() - t, 2)
    try:
        common = {"num_frames": frames, "size": size, "progress": False}
        t = time.perf_counter()
        extract_frames(videos, tmp / "local", workers=num_cpus, work_dir=tmp / "wl", **common)
        local_s = time.perf_counter() - t
        engine = EngineParams(frames="ray", num_cpus=num_cpus)
        ray_runs = []
        for i in range(repeats):  # the first starts Ray's worker processes (imports); later ones reuse them
            t = time.perf_counter()
            extract_frames(videos, tmp / f"ray{i}", work_dir=tmp / f"wr{i}", engine=engine, **common)
            ray_runs.append(time.perf_counter() - t)
        ray_s = ray_runs[-1]
        result["frames"] = {
            "local_s": round(local_s, 2),
            "ray_s_runs": [round(s, 2) for s in ray_runs],
            "local_clips_per_s": round(len(videos) / local_s, 2),
            "ray_clips_per_s": round(len(videos) / ray_s, 2),
            "overhead_ratio": round(ray_s / local_s, 2),
            "overhead_ratio_first_run": round(ray_runs[0] / local_s, 2),
            "overhead_ratio_with_start": round((ray_runs[0] + result["ray_start_s"]) / local_s, 2),
            "byte_identical": all(_same(tmp / "local", tmp / f"ray{i}") for i in range(repeats)),
        }
        print(json.dumps(result["frames"]), flush=True)
        if captioner:
            args = {"batch_size": batch, "root": root}
            t = time.perf_counter()
            local, m_local = make_captions(captioner, tmp / "local", **args, device="cpu")
            local_s = time.perf_counter() - t
            caps: dict[str, Any] = {
                "frames": m_local["frames"],
                "local_s": round(local_s, 2),
                "local_captions_per_s": round(m_local["frames"] / local_s, 2),
            }
            for actors in sorted({1, num_cpus}):
                engine = EngineParams(
                    captions="ray", actors=actors, num_cpus=num_cpus, part_frames=part_frames
                )
                runs, equal = [], True
                for i in range(repeats):
                    t = time.perf_counter()
                    on_ray, _ = make_captions(
                        captioner, tmp / "local", **args, engine=engine, work_dir=tmp / f"wc{actors}-{i}"
                    )
                    runs.append(time.perf_counter() - t)
                    equal = equal and bool(on_ray.equals(local))
                caps[f"ray_{actors}_actors"] = {
                    "s_runs": [round(s, 2) for s in runs],
                    "captions_per_s": round(m_local["frames"] / runs[-1], 2),
                    "overhead_ratio": round(runs[-1] / local_s, 2),
                    "overhead_ratio_first_run": round(runs[0] / local_s, 2),
                    "equal": equal,
                }
            result["captions"] = caps
            print(json.dumps(caps), flush=True)
    finally:
        ray.shutdown()
    result["load_avg_after"] = list(os.getloadavg())
    result["scratch"] = str(tmp)
    write_json(out, result)
    print(f"-> {out}")


if __name__ == "__main__":
    typer.run(main)
