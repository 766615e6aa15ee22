"""Pseudo captions for a frames store (the ``captions`` stage).

:func:`make_captions` captions every frame of a frames store with one of: a BLIP captioner
(:mod:`discovla.captioner`); ``oracle``, the shapes world's ground-truth still caption of the nearest source
frame (an upper bound); or a ``.json`` file of published pseudo captions. On the shapes world it also
scores the captions against the generator's ground truth.

With ``engine.captions == "ray"`` a BLIP captioner runs as an actor pool on Ray
(:func:`caption_frames_ray`): the same :class:`Captioner` over the same batches of frame rows, each part of
the store captioned into a resumable part file under ``work_dir``; the table is the local engine's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from discovla.artifacts.captions import CAPTIONS_SCHEMA, check_one_caption_per_frame, import_pseudo_captions
from discovla.artifacts.frame_rows import read_frame_rows, shard_batch_sizes
from discovla.artifacts.frames import KEYS, count_frames, frame_shards, iter_frame_batches, read_frames_index
from discovla.captioner import ORACLE, Captioner, check_captioner, load_captioner
from discovla.data.shapes import caption_agreement, match_frame_truth
from discovla.engines import EngineParams
from discovla.io import write_parquet
from discovla.text import CaptionsError, normalize_caption

# Bump when the captioning of a part or the part layout changes, so that stale parts are never reused.
_PART_VERSION = 1


def caption_frames(
    captioner: Captioner, frames_dir: str | Path, batch_size: int, max_new_tokens: int, num_beams: int
) -> pd.DataFrame:
    """One caption per frame row of the frames store: ``video_id, frame, caption``."""
    parts = []
    total = count_frames(frames_dir)
    with tqdm(total=total, desc=f"captions ({captioner.device.type})", unit="frame") as bar:
        for keys, images in iter_frame_batches(frames_dir, batch_size):
            keys["caption"] = captioner.caption(images, batch_size, max_new_tokens, num_beams, progress=False)
            parts.append(keys)
            bar.update(len(keys))
    return (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["video_id", "frame", "caption"])
    )


class _CaptionParts:
    """Ray actor (the ``ray`` engine): one :class:`Captioner`; captions a part's frame rows batch by batch,
    the local engine's batches, and writes the part (its unfinished count and device in the metadata)."""

    def __init__(self, model: str, device: str, batch_size: int, max_new_tokens: int, num_beams: int) -> None:
        self.captioner = load_captioner(model, device)
        self.args = (batch_size, max_new_tokens, num_beams)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[int]]:
        (shard,), (start,), (stop,), (sizes,), (out,) = (
            batch[k] for k in ("shard", "start", "stop", "sizes", "part")
        )
        keys, images = read_frame_rows(str(shard), int(start), int(stop))
        before, captions, offset = self.captioner.unfinished, [], 0
        for n in (int(n) for n in sizes):
            captions += self.captioner.caption(images[offset : offset + n], *self.args, progress=False)
            offset += n
        keys["caption"] = captions
        meta = {
            b"discovla.unfinished": str(self.captioner.unfinished - before).encode(),
            b"discovla.device": self.captioner.device.type.encode(),
        }
        table = pa.Table.from_pandas(
            keys.astype({"frame": "int32"}), schema=CAPTIONS_SCHEMA, preserve_index=False
        )
        write_parquet(str(out), table.replace_schema_metadata(meta))
        return {"frames": [len(keys)]}


def _stamp(path: Path) -> list[Any]:
    """Name, size and mtime of a file, or of every file under a directory (what a part depends on)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.exists()]


def caption_frames_ray(
    model: str,
    frames_dir: str | Path,
    batch_size: int,
    max_new_tokens: int,
    num_beams: int,
    *,
    engine: EngineParams,
    work_dir: str | Path,
    progress: bool = True,
) -> tuple[pd.DataFrame, int, str]:
    """:func:`caption_frames` on Ray: captions, captions cut at ``max_new_tokens``, the actors' device.

    The store's rows are cut into the batches :func:`caption_frames` captions (per shard, ``batch_size``
    rows), grouped into parts of about ``engine.part_frames`` rows; an actor pool of ``engine.actors``
    captioners (``engine.num_gpus`` GPUs each) writes ``work_dir/<key>/part-XXXXX.parquet`` per part (key:
    hash of the shards' names, sizes and mtimes, the model files and the params), so a rerun after a kill
    captions only the missing parts; that directory is removed after success."""
    check_captioner(model)  # a missing model is one line before Ray starts; only the actors load it
    shards = frame_shards(frames_dir)
    plan: list[dict[str, Any]] = []  # absolute paths for the workers (their working directory is not ours)
    for path in shards:
        shard, start, sizes = str(path.resolve()), 0, []
        for n in shard_batch_sizes(path, batch_size):
            if sizes and sum(sizes) + n > engine.part_frames:
                plan.append({"shard": shard, "start": start, "stop": start + sum(sizes), "sizes": sizes})
                start, sizes = start + sum(sizes), []
            sizes.append(n)
        if sizes:
            plan.append({"shard": shard, "start": start, "stop": start + sum(sizes), "sizes": sizes})
    blob = [_PART_VERSION, model, _stamp(Path(model)), batch_size, max_new_tokens, num_beams]
    blob += [engine.part_frames, [_stamp(s) for s in shards]]
    key = hashlib.sha256(json.dumps(blob).encode()).hexdigest()[:16]
    parts_dir = Path(work_dir).resolve() / key
    parts_dir.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(plan):
        part["part"] = str(parts_dir / f"part-{i:05d}.parquet")
    todo = [p for p in plan if not Path(p["part"]).exists()]
    total = sum(p["stop"] - p["start"] for p in plan)
    resumed = total - sum(p["stop"] - p["start"] for p in todo)
    from discovla.ray_engine import actor_device, run_parts

    kwargs = {
        "model": str(Path(model).resolve()) if Path(model).exists() else model,  # a directory, or a hub id
        "device": actor_device(engine),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "num_beams": num_beams,
    }
    desc = f"captions (ray, {kwargs['device']})"
    with tqdm(total=total, initial=resumed, desc=desc, unit="frame", disable=not progress) as bar:
        run_parts(
            todo, _CaptionParts, engine=engine, on_done=lambda r: bar.update(int(r["frames"])), kwargs=kwargs
        )
    tables, unfinished, device = [], 0, str(kwargs["device"])
    for part in plan:
        table = pq.read_table(part["part"])
        meta = table.schema.metadata or {}
        unfinished += int(meta.get(b"discovla.unfinished", b"0"))
        device = meta.get(b"discovla.device", device.encode()).decode()
        tables.append(table.replace_schema_metadata(None))
    captions = (
        pa.concat_tables(tables).to_pandas()
        if tables
        else pd.DataFrame(columns=["video_id", "frame", "caption"])
    )
    shutil.rmtree(parts_dir)
    try:
        Path(work_dir).rmdir()  # only if no other (stale) work is left in it
    except OSError:
        pass
    return captions, unfinished, device


def make_captions(
    model: str,
    frames_dir: str | Path,
    *,
    root: str | Path,
    batch_size: int = 128,
    max_new_tokens: int = 24,
    num_beams: int = 1,
    dataset: str = "shapes",
    device: str | torch.device = "auto",
    engine: EngineParams | None = None,
    work_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Caption every frame row of ``frames_dir``; returns the captions and the stage metrics.

    ``model``: hub id or local directory (BLIP), ``oracle`` (shapes world: the ground-truth still caption of
    the nearest source frame), or a ``.json`` file of published pseudo captions
    (:func:`import_pseudo_captions`). ``root``: the dataset's directory; on the shapes world the metrics
    include agreement with ``<root>/frame_truth.parquet``. ``engine.captions == "ray"`` (a BLIP model only):
    captioned on Ray by :func:`caption_frames_ray`, resumable parts under ``work_dir``.
    """
    start = time.perf_counter()
    index = read_frames_index(frames_dir)
    truth = None
    if dataset == "shapes":
        truth_path = Path(root) / "frame_truth.parquet"
        if not truth_path.exists():
            raise CaptionsError(f"{truth_path} not found (run the shapes stage)")
        truth = match_frame_truth(index, pd.read_parquet(truth_path))
    device_type, unfinished, caption_seconds = "cpu", 0, 0.0
    if model == ORACLE:
        if truth is None:
            raise CaptionsError(
                f"captioner.model: oracle needs the shapes world (data.dataset is {dataset!r})"
            )
        captions = index[KEYS].assign(caption=truth.map(normalize_caption).to_numpy())
    elif model.endswith(".json") and not Path(model).is_dir():
        if not Path(model).is_file():
            raise CaptionsError(f"captioner.model: pseudo-caption file {model!r} not found")
        captions = import_pseudo_captions(model, index)
    elif engine is not None and engine.captions == "ray":
        if work_dir is None:
            raise CaptionsError("the ray captions engine needs a work directory for its parts")
        caption_start = time.perf_counter()
        captions, unfinished, device_type = caption_frames_ray(
            model, frames_dir, batch_size, max_new_tokens, num_beams, engine=engine, work_dir=work_dir
        )
        caption_seconds = time.perf_counter() - caption_start
    else:
        captioner = load_captioner(model, device)
        device_type = captioner.device.type
        caption_start = time.perf_counter()
        captions = caption_frames(captioner, frames_dir, batch_size, max_new_tokens, num_beams)
        caption_seconds, unfinished = time.perf_counter() - caption_start, captioner.unfinished
    check_one_caption_per_frame(index, captions)
    captions = index[KEYS].merge(captions, on=KEYS, how="left")
    seconds = time.perf_counter() - start
    metrics: dict[str, Any] = {
        "captioner": model,
        "device": device_type,
        "frames": len(captions),
        "videos": int(captions.video_id.nunique()),
        "empty_captions": int((captions.caption.str.strip() == "").sum()),
        "unfinished_captions": unfinished,  # cut at max_new_tokens: raise captioner.max_new_tokens
        "distinct_captions": int(captions.caption.nunique()),
        "seconds": round(seconds, 2),  # everything: reading frames, loading the model, captioning
        "captions_per_s": round(len(captions) / max(caption_seconds or seconds, 1e-9), 1),  # generation only
    }
    if truth is not None:
        metrics["agreement"] = caption_agreement(captions.caption.tolist(), truth.tolist())
    return captions, metrics
