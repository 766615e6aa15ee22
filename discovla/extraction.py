"""The frames store's writer: :func:`extract_frames` samples a dataset's videos into the frames store.

It runs :func:`discovla.sampling.sample_frames` over the videos in parallel worker processes, keeping each
finished batch of videos as a resume part in a work directory the caller names, then writes the store in
the format :mod:`discovla.artifacts.frames` defines and reads (docs/formats.md). Readers never import this
module, so nothing that only reads frames depends on the sampler.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from discovla import locations
from discovla.artifacts.frames import (
    FORMAT_VERSION,
    FRAMES_SCHEMA,
    PARQUET_OPTIONS,
    SKIPPED_COLUMNS,
    VIDEOS_COLUMNS,
    encode_frames,
    frames_schema,
)
from discovla.engines import EngineParams
from discovla.io import atomic_dir, write_parquet
from discovla.sampling import VideoError, sample_frames

# Bump when the sampling or the part-file layout changes, so that stale resume parts are never reused.
# 2: in-process decoding (PyAV) and the raw RGB store of format 2.
_ALGO_VERSION = 2


@dataclass(frozen=True)
class _Task:
    video_id: str
    path: str
    num_frames: int
    size: int
    max_fps: float | None
    timeout: float


def _process(task: _Task) -> dict[str, Any]:
    """Worker: sample one video and encode its frames as store cells, or report why it was skipped."""
    try:
        s = sample_frames(task.path, task.num_frames, task.size, max_fps=task.max_fps, timeout=task.timeout)
    except VideoError as exc:
        return {"video_id": task.video_id, "reason": exc.reason}
    return {
        "video_id": task.video_id,
        "images": encode_frames(s.frames),
        "timestamps": s.timestamps.tolist(),
        "source_frames": s.source_frames,
        "duration": s.duration,
        "repeated": s.repeated,
    }


def _sample_part(part: dict[str, Any], **params: Any) -> dict[str, int]:
    """Ray task (the ``ray`` engine): sample one batch of videos with :func:`_process` and write its part
    file with :func:`_write_part`, as the local engine does."""
    ids = [str(v) for v in part["video_id"]]
    paths = [str(p) for p in part["path"]]
    splits = dict(zip(ids, (str(s) for s in part["split"]), strict=True))
    opens = [str(p) for p in part["open"]]  # ``path`` made absolute; ``path`` itself is what is recorded
    results = [_process(_Task(v, p, **params)) for v, p in zip(ids, opens, strict=True)]
    _write_part(Path(part["part"]), results, splits, dict(zip(ids, paths, strict=True)))
    return {"videos": len(ids), "frames": sum(len(r.get("images", ())) for r in results)}


def _work_key(videos: pd.DataFrame, num_frames: int, size: int, max_fps: float | None, batch: int) -> str:
    """Hash of everything a part file depends on: the video list (with file size and mtime), the params."""
    try:
        found = locations.stat_many(list(videos.path))
    except locations.LocationError:
        found = [None] * len(videos)  # a store unreachable now: sampled (and skipped with the reason)
    items = [
        [vid, path, list(f) if f else None]
        for vid, path, f in zip(videos.video_id, videos.path, found, strict=True)
    ]
    blob = json.dumps([_ALGO_VERSION, FORMAT_VERSION, num_frames, size, max_fps, batch, items]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _write_part(
    path: Path, results: list[dict[str, Any]], splits: dict[str, str], paths: dict[str, str]
) -> None:
    """One resume part: the frames rows of a batch, with its videos/skipped rows in the schema metadata."""
    cols: dict[str, list[Any]] = {name: [] for name in FRAMES_SCHEMA.names}
    videos, skipped = [], []
    for r in results:
        vid = r["video_id"]
        if "reason" in r:
            skipped.append([vid, paths[vid], r["reason"]])
            continue
        videos.append([vid, splits[vid], r["source_frames"], r["duration"], r["repeated"]])
        for i, (ts, img) in enumerate(zip(r["timestamps"], r["images"], strict=True)):
            cols["video_id"].append(vid)
            cols["frame"].append(i)
            cols["timestamp"].append(ts)
            cols["image"].append(img)
    meta = {b"discovla.videos": json.dumps(videos), b"discovla.skipped": json.dumps(skipped)}
    table = pa.table(cols, schema=FRAMES_SCHEMA.with_metadata(meta))
    write_parquet(path, table, **PARQUET_OPTIONS)


def _read_part_meta(path: Path) -> tuple[list[list[Any]], list[list[Any]]]:
    meta = pq.read_schema(path).metadata
    return json.loads(meta[b"discovla.videos"]), json.loads(meta[b"discovla.skipped"])


def _shard_plan(part_rows: list[int], shard_rows: int) -> list[list[tuple[int, int, int]]]:
    """Per shard, its ``(part, start, stop)`` row ranges: the parts' rows in order, cut every ``shard_rows``
    rows (at least one shard, empty when there are no rows, so readers always find the schema)."""
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    plan: list[list[tuple[int, int, int]]] = [[]]
    room = shard_rows
    for i, n in enumerate(part_rows):
        start = 0
        while start < n:
            if room == 0:
                plan.append([])
                room = shard_rows
            take = min(room, n - start)
            plan[-1].append((i, start, start + take))
            start, room = start + take, room - take
    return plan


def _write_shard(out: str, slices: list[list[Any]], size: int) -> dict[str, int]:
    """Write one shard of the store: the given ``[part file, start, stop]`` row ranges in order, one row
    group per video (as the local engine always wrote them). A function of its arguments alone, so shards are
    written in parallel, by threads here or by Ray tasks on the nodes that see the store."""
    with pq.ParquetWriter(out, frames_schema(size), **PARQUET_OPTIONS) as writer:
        rows = 0
        for part, a, b in slices:
            table = pq.read_table(part).replace_schema_metadata(None).slice(a, b - a)
            ids = table.column("video_id").to_numpy(zero_copy_only=False)
            cuts = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), len(ids)]
            for x, y in zip(cuts[:-1], cuts[1:], strict=False):  # one video's rows: its own row group
                writer.write_table(table.slice(x, y - x), row_group_size=y - x)
            rows += table.num_rows
    return {"rows": rows}


def _write_shard_task(task: dict[str, Any], size: int) -> dict[str, int]:
    """Ray task (the ``ray`` engine): :func:`_write_shard` of one planned shard."""
    slices = [
        [str(p), int(a), int(b)] for p, a, b in zip(task["parts"], task["starts"], task["stops"], strict=True)
    ]
    return _write_shard(str(task["out"]), slices, size)


def _write_shards(
    out_dir: Path,
    part_paths: list[Path],
    shard_rows: int,
    size: int,
    workers: int,
    engine: EngineParams | None,
) -> int:
    """Write the store's shards from the resume parts, in parallel: ``workers`` threads, or one Ray task
    per shard with the ``ray`` engine on a running cluster (a local Ray would only add its start-up to
    what threads do here); the same files as writing them one after another. Returns the shard count."""
    plan = _shard_plan([pq.ParquetFile(p).metadata.num_rows for p in part_paths], shard_rows)
    tasks = [  # plain columns (Ray Data rows), absolute paths (the workers' directory is not ours)
        {
            "out": str((out_dir / f"shard-{k:05d}.parquet").resolve()),
            "parts": [str(part_paths[i].resolve()) for i, _, _ in slices],
            "starts": [a for _, a, _ in slices],
            "stops": [b for _, _, b in slices],
        }
        for k, slices in enumerate(plan)
    ]
    from discovla.ray_engine import on_a_cluster, run_parts  # imports no Ray until it runs

    if engine is not None and engine.frames == "ray" and len(tasks) > 1 and on_a_cluster(engine):
        run_parts(tasks, _write_shard_task, engine=engine, on_done=lambda r: None, kwargs={"size": size})
    else:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(tasks)))) as pool:
            list(pool.map(lambda t: _write_shard_task(t, size), tasks))
    return len(tasks)


def _pending_results(tasks: list[_Task], workers: int, bar: tqdm) -> Iterator[dict[str, Any]]:
    """Results in task order; parallel over ``workers`` processes (inline when workers == 1)."""
    if workers == 1 or len(tasks) <= 1:
        for t in tasks:
            r = _process(t)
            bar.update(1)
            yield r
        return
    chunk = max(1, min(8, len(tasks) // (workers * 4)))
    with multiprocessing.Pool(workers) as pool:
        for r in pool.imap(_process, tasks, chunksize=chunk):
            bar.update(1)
            yield r


def _check_videos(videos: pd.DataFrame) -> pd.DataFrame:
    missing = {"video_id", "path", "split"} - set(videos.columns)
    if missing:
        raise ValueError(f"videos table is missing column(s) {', '.join(sorted(missing))}")
    videos = videos.reset_index(drop=True).astype({"video_id": str, "path": str, "split": str})
    dup = videos.video_id[videos.video_id.duplicated()]
    if len(dup):
        raise ValueError(f"video_id {dup.iloc[0]!r} appears twice in the videos table")
    return videos


def extract_frames(
    videos: pd.DataFrame,
    out_dir: str | Path,
    num_frames: int,
    size: int,
    workers: int = 1,
    shard_rows: int = 50000,
    *,
    work_dir: str | Path,
    batch_videos: int = 64,
    max_fps: float | None = None,
    timeout: float = 600.0,
    progress: bool = True,
    engine: EngineParams | None = None,
) -> dict[str, Any]:
    """Sample every video of ``videos`` (columns video_id, path, split) and write ``out_dir``.

    Output (docs/formats.md): ``shard-XXXXX.parquet`` (video_id, frame, timestamp, image as raw RGB; rows in
    the table's video order, then frame, one row group per video), ``videos.csv`` and ``skipped.csv``.
    ``out_dir`` is replaced atomically. Videos are processed in batches of ``batch_videos``; each finished
    batch is kept as ``work_dir/<key>/part-XXXXX.parquet`` (key: hash of the video list, file sizes/mtimes,
    params and versions), so a rerun after a crash decodes only the missing batches; that directory is
    removed after success.
    ``work_dir`` is the caller's (the stage passes ``.work/frames``): this module knows no pipeline paths.
    ``engine.frames == "ray"``: the batches are sampled as a Ray Data pipeline
    (:func:`discovla.ray_engine.run_parts`: the same worker function and part files, so either engine
    resumes the other's parts, and the same store); else in ``workers`` local processes. The store's
    shards are then written from the parts in parallel (:func:`_write_shards`: ``workers`` threads, or Ray
    tasks on a running cluster), each shard independent of the others.

    Returns metrics: videos, done, skipped, skipped_by_reason (keyed by the reason's category, the text
    before ':'), repeated, frames, shards, resumed (videos taken from earlier parts), seconds, and
    videos_per_s / frames_per_s: videos decoded (skipped included) and frames written in
    this run (resumed parts excluded) over the run's wall-clock seconds.
    """
    if min(num_frames, size, workers, shard_rows, batch_videos) < 1:
        raise ValueError("num_frames, size, workers, shard_rows and batch_videos must all be >= 1")
    t0 = time.perf_counter()
    videos = _check_videos(videos)
    splits = dict(zip(videos.video_id, videos.split, strict=True))
    paths = dict(zip(videos.video_id, videos.path, strict=True))
    parts_dir = Path(work_dir) / _work_key(videos, num_frames, size, max_fps, batch_videos)
    parts_dir.mkdir(parents=True, exist_ok=True)

    batches = [videos.iloc[i : i + batch_videos] for i in range(0, len(videos), batch_videos)]
    part_paths = [parts_dir / f"part-{b:05d}.parquet" for b in range(len(batches))]
    todo = [b for b, p in enumerate(part_paths) if not p.exists()]
    resumed = len(videos) - sum(len(batches[b]) for b in todo)
    tasks = [
        _Task(vid, path, num_frames, size, max_fps, timeout)
        for b in todo
        for vid, path in zip(batches[b].video_id, batches[b].path, strict=True)
    ]
    new_frames = 0
    with tqdm(total=len(videos), initial=resumed, desc="frames", unit="video", disable=not progress) as bar:
        if engine is not None and engine.frames == "ray":
            from discovla.ray_engine import run_parts

            def done(row: dict[str, Any]) -> None:
                nonlocal new_frames
                new_frames += int(row["frames"])
                bar.update(int(row["videos"]))

            parts = [
                {  # absolute paths for the workers (their working directory is not ours)
                    "part": str(part_paths[b].resolve()),
                    "video_id": batches[b].video_id.tolist(),
                    "path": batches[b].path.tolist(),
                    "open": [p if locations.is_uri(p) else os.path.abspath(p) for p in batches[b].path],
                    "split": batches[b].split.tolist(),
                }
                for b in todo
            ]
            params = {"num_frames": num_frames, "size": size, "max_fps": max_fps, "timeout": timeout}
            run_parts(parts, _sample_part, engine=engine, on_done=done, kwargs=params)
        else:
            results = _pending_results(tasks, workers, bar)
            try:
                for b in todo:
                    batch = [next(results) for _ in range(len(batches[b]))]
                    new_frames += sum(len(r.get("images", ())) for r in batch)
                    _write_part(part_paths[b], batch, splits, paths)
            finally:
                results.close()  # stops the worker pool, also on error

    video_rows: list[list[Any]] = []
    skipped_rows: list[list[Any]] = []
    for p in part_paths:
        v, sk = _read_part_meta(p)
        video_rows += v
        skipped_rows += sk
    frames_written = sum(pq.ParquetFile(p).metadata.num_rows for p in part_paths)
    with atomic_dir(out_dir) as tmp:
        n_shards = _write_shards(tmp, part_paths, shard_rows, size, workers, engine)
        pd.DataFrame(video_rows, columns=VIDEOS_COLUMNS).to_csv(tmp / "videos.csv", index=False)
        pd.DataFrame(skipped_rows, columns=SKIPPED_COLUMNS).to_csv(tmp / "skipped.csv", index=False)
    shutil.rmtree(parts_dir)
    try:
        Path(work_dir).rmdir()  # only if no other (stale) work is left in it
    except OSError:
        pass

    seconds = time.perf_counter() - t0
    by_reason = Counter(r[2].split(":", 1)[0] for r in skipped_rows)
    return {
        "videos": len(videos),
        "done": len(video_rows),
        "skipped": len(skipped_rows),
        "skipped_by_reason": dict(sorted(by_reason.items())),
        "repeated": sum(bool(r[4]) for r in video_rows),
        "frames": frames_written,
        "shards": n_shards,
        "resumed": resumed,
        "seconds": round(seconds, 3),
        "videos_per_s": round(len(tasks) / seconds, 3),
        "frames_per_s": round(new_frames / seconds, 3),
    }
