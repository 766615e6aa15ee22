"""Writing the world: the stills corpus, one mp4 per video, and the caption, twin and frame-truth tables.

:func:`generate_world` writes the folder form (``videos/``, ``captions.csv``) plus ``twins.csv``,
``frame_truth.parquet`` and ``stills/{train,val}.parquet`` atomically, with a process pool whose size does
not change the output.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from multiprocessing import get_context
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from discovla.config import ShapesParams
from discovla.data.shapes.language import frame_captions, static_captions, still_caption, video_captions
from discovla.data.shapes.sampling import SPLIT_KEYS, sample_specs, video_rng
from discovla.data.shapes.scene import ShapesError, sample_still
from discovla.data.shapes.video import VideoSpec, render_video
from discovla.ffmpeg import ffmpeg_exe
from discovla.images import encode_png
from discovla.io import atomic_dir, write_parquet

# ---------------------------------------------------------------------------------------------- stills

STILLS_CHUNK = 500


def _still_chunk(task: tuple[int, int, int, int, int]) -> list[tuple[bytes, str]]:
    seed, split_key, start, stop, size = task
    out = []
    for i in range(start, stop):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(100 + split_key, i)))
        img, objs = sample_still(rng, size)
        out.append((encode_png(img), still_caption(objs)))
    return out


def make_stills(seed: int, split: str, count: int, size: int, pool: Pool | None = None) -> pa.Table:
    """``count`` stills of ``split`` as a table ``image (PNG bytes), caption``; deterministic in ``seed``.

    Each still has its own generator (``SeedSequence(seed, spawn_key=(100 + split, i))``), so the result
    does not depend on ``pool``.
    """
    split_key = {"train": 0, "val": 1}[split]
    tasks = [(seed, split_key, a, min(a + STILLS_CHUNK, count), size) for a in range(0, count, STILLS_CHUNK)]
    chunks = pool.imap(_still_chunk, tasks) if pool is not None else map(_still_chunk, tasks)
    images, captions = [], []
    with tqdm(total=count, desc=f"stills {split}", unit="img", mininterval=1.0) as bar:
        for chunk in chunks:
            images += [c[0] for c in chunk]
            captions += [c[1] for c in chunk]
            bar.update(len(chunk))
    return pa.table({"image": pa.array(images, pa.binary()), "caption": pa.array(captions, pa.string())})


def write_stills(params: ShapesParams, out_dir: str | Path, pool: Pool | None = None) -> dict[str, Any]:
    """Write the stills corpus as ``train.parquet`` and ``val.parquet`` in ``out_dir``; returns counts."""
    out = {}
    for split, count in (("train", params.stills_train), ("val", params.stills_val)):
        table = make_stills(params.seed, split, count, params.size, pool)
        write_parquet(Path(out_dir) / f"{split}.parquet", table)
        caps = table.column("caption").to_pylist()
        out[split] = {"images": count, "distinct_captions": len(set(caps))}
    return out


# ---------------------------------------------------------------------------------------------- videos


def encode_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    """Encode ``(T, H, W, 3) uint8`` RGB frames as H.264 (libx264, yuv420p, crf 18), deterministically."""
    t, h, w, _ = frames.shape
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:0",
        "-an", "-c:v", "libx264", "-preset", "medium", "-crf", "18", "-pix_fmt", "yuv420p",
        "-threads", "1", "-x264-params", "threads=1:lookahead-threads=1",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
        "-movflags", "+faststart", str(path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True, check=False)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"ffmpeg failed to encode {path.name}: {msg[-1] if msg else proc.returncode}")


def _make_video(task: tuple[VideoSpec, str]) -> tuple[str, list[str]]:
    spec, videos_dir = task
    encode_mp4(render_video(spec), Path(videos_dir) / f"{spec.video_id}.mp4", spec.fps)
    return spec.video_id, frame_captions(spec)


def captions_table(specs: Sequence[VideoSpec], params: ShapesParams) -> pd.DataFrame:
    """``video_id, caption, split``: ``train_captions`` captions per train/val video, one per test one;
    narrative paraphrases, or with ``captions: static`` what stills of the video show."""
    rows = []
    for spec in specs:
        rng = video_rng(params.seed, spec.split, int(spec.video_id[len(spec.split) :]), 1)
        n = 1 if spec.split == "test" else params.train_captions
        caps = static_captions(spec, n) if params.captions == "static" else video_captions(spec, rng, n)
        rows += [(spec.video_id, cap, spec.split) for cap in caps]
    return pd.DataFrame(rows, columns=["video_id", "caption", "split"])


def twins_table(specs: Sequence[VideoSpec]) -> pd.DataFrame:
    """``video_id, twin_id, kind, split``: every twin pair in both directions."""
    rows = []
    for s in specs:
        if s.twin_of is not None:
            rows += [
                (s.twin_of, s.video_id, s.twin_kind, s.split),
                (s.video_id, s.twin_of, s.twin_kind, s.split),
            ]
    df = pd.DataFrame(rows, columns=["video_id", "twin_id", "kind", "split"])
    return df.sort_values(["video_id", "kind", "twin_id"], kind="stable").reset_index(drop=True)


def frame_truth_table(specs: Sequence[VideoSpec], truth: dict[str, list[str]]) -> pa.Table:
    """``video_id, source_frame (int32), time (float64), caption`` for every frame of every video."""
    ids, frames, times, caps = [], [], [], []
    for s in specs:
        for t, cap in enumerate(truth[s.video_id]):
            ids.append(s.video_id)
            frames.append(t)
            times.append(t / s.fps)
            caps.append(cap)
    return pa.table(
        {
            "video_id": pa.array(ids, pa.string()),
            "source_frame": pa.array(frames, pa.int32()),
            "time": pa.array(times, pa.float64()),
            "caption": pa.array(caps, pa.string()),
        }
    )


def _dir_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 3)


def _twin_metrics(specs: Sequence[VideoSpec], caps: pd.DataFrame, twins: pd.DataFrame) -> dict[str, Any]:
    out = {}
    for split in SPLIT_KEYS:
        n = sum(s.split == split for s in specs)
        tw = twins[twins.split == split]
        out[split] = {
            "videos": n,
            "base_videos": sum(s.split == split and s.twin_of is None for s in specs),
            "captions": int((caps.split == split).sum()),
            "order_twin_pairs": int((tw.kind == "order").sum() // 2),
            "content_twin_pairs": int((tw.kind == "content").sum() // 2),
            "with_order_twin": round(tw[tw.kind == "order"].video_id.nunique() / max(n, 1), 4),
            "with_content_twin": round(tw[tw.kind == "content"].video_id.nunique() / max(n, 1), 4),
        }
    return out


def generate_world(params: ShapesParams, root: str | Path, workers: int = 2) -> dict[str, Any]:
    """Write the whole shapes world to ``root`` atomically (folder form + twins, frame truth, stills).

    ``workers`` processes render and encode videos (one single-threaded ffmpeg each) and render stills;
    the output does not depend on it. Returns the metrics (counts per split, twin fractions, stills,
    sizes on disk, seconds, videos/s).
    """
    start = time.perf_counter()
    specs = sample_specs(params)
    pool = get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        with atomic_dir(root) as tmp:
            videos_dir = tmp / "videos"
            videos_dir.mkdir()
            tasks = [(s, str(videos_dir)) for s in specs]
            results = (
                pool.imap_unordered(_make_video, tasks, chunksize=8) if pool else map(_make_video, tasks)
            )
            truth = dict(tqdm(results, total=len(tasks), desc="shapes videos", unit="video", mininterval=1.0))
            video_seconds = time.perf_counter() - start
            caps = captions_table(specs, params)
            caps.to_csv(tmp / "captions.csv", index=False)
            twins = twins_table(specs)
            twins.to_csv(tmp / "twins.csv", index=False)
            write_parquet(tmp / "frame_truth.parquet", frame_truth_table(specs, truth))
            stills = write_stills(params, tmp / "stills", pool)
            metrics = {
                "seed": params.seed,
                "size": params.size,
                "fps": params.fps,
                "frames_per_video": specs[0].frames,
                "splits": _twin_metrics(specs, caps, twins),
                "stills": stills,
                "disk_mb": {"videos": _dir_mb(videos_dir), "stills": _dir_mb(tmp / "stills")},
            }
    finally:
        if pool is not None:
            pool.terminate()  # all work is collected above; on error this stops the rest
            pool.join()
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    metrics["video_seconds"] = round(video_seconds, 2)
    metrics["videos_per_s"] = round(len(specs) / max(video_seconds, 1e-9), 2)
    return metrics


def match_frame_truth(frames_index: pd.DataFrame, truth: pd.DataFrame) -> pd.Series:
    """Ground-truth still caption of each frame row: the truth row of the same video nearest in time."""
    missing = sorted(set(frames_index.video_id) - set(truth.video_id))
    if missing:
        raise ShapesError(
            f"{len(missing)} videos have no rows in frame_truth.parquet (first: {missing[0]!r}); "
            "frames and shapes world out of date? rerun the shapes and frames stages"
        )
    left = frames_index[["video_id", "timestamp"]].astype({"timestamp": "float64"}).reset_index()
    right = truth[["video_id", "time", "caption"]].astype({"time": "float64"})
    merged = pd.merge_asof(
        left.sort_values("timestamp"),
        right.sort_values("time"),
        left_on="timestamp",
        right_on="time",
        by="video_id",
        direction="nearest",
    )
    return merged.set_index("index")["caption"].sort_index().rename("truth").reset_index(drop=True)
