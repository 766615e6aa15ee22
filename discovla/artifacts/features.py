"""Feature cache: everything training and evaluation read, computed once, read back in batches from disk.

The features stage (:mod:`discovla.featurize`) decodes the sampled frames once and runs the frozen backbone
once. The cache directory holds (docs/formats.md):

- ``pixels.arrow``: the exact pixels the first trainable layer sees, one Arrow record batch per video
  (:mod:`discovla.artifacts.pixels`), read a video at a time;
- ``frames.parquet``: per frame, the frozen L2-normalised image embedding (zero-shot baseline, analysis);
- ``captions.parquet``: per real caption, token ids and the frozen text embedding;
- ``pseudo.parquet``: per frame, its pseudo caption, token ids and frozen text embedding;
- ``videos.csv``, ``twins.csv`` (shapes world) and ``meta.json``;
- ``manifest.json``, written last: every file's size, time and sha256 and the cache's content digest
  (:mod:`discovla.artifacts.manifest`), so a load checks the files cheaply instead of reading them all.

This module owns the layout, its writer primitives (:func:`write_tables`, :func:`save_features`) and the
reader: :func:`load_features` returns the small tensors (token ids, the caption table) dense, the pixels
as a :class:`~discovla.artifacts.pixels.VideoPixels` reader, and the frozen embeddings on first use. It
imports nothing of the machinery that produces a cache (frames store, captioner, backbone), so what
training imports is the reader alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from discovla.artifacts.manifest import ManifestError, check_manifest, write_manifest
from discovla.artifacts.pixels import (
    PIXELS_FILE,
    PixelWriter,
    VideoPixels,
    fixed_list,
    pixel_file_shape,
    to_numpy,
)
from discovla.errors import DiscoVLAError
from discovla.io import atomic_dir, read_json, write_json
from discovla.provenance import tensors_digest

RERUN = "rerun the features stage (dvc repro features)"


class FeaturesError(DiscoVLAError, ValueError):
    """A feature cache (or its inputs) that is missing or inconsistent, with what to rerun."""


def write_tables(
    out: Path,
    meta: dict[str, Any],
    frames: pd.DataFrame,
    frame_emb: np.ndarray,
    caps: pd.DataFrame,
    cap_tokens: np.ndarray,
    cap_emb: np.ndarray,
    pseudo: pd.DataFrame,
    videos: pd.DataFrame,
) -> None:
    """Everything but the pixels: ``frames`` (video_id, frame) rows in pixels.arrow's order, ``pseudo``
    (video_id, frame, caption, tokens, embedding) and ``caps`` (caption_id, video_id, split, caption)."""
    frame_table = pa.table(
        {
            "video_id": pa.array(frames.video_id, pa.string()),
            "frame": pa.array(frames.frame, pa.int32()),
            "embedding": fixed_list(frame_emb.astype(np.float32)),
        }
    )
    pq.write_table(frame_table, out / "frames.parquet", compression="zstd")
    cap_table = pa.table(
        {
            "caption_id": pa.array(caps.caption_id, pa.int64()),
            "video_id": pa.array(caps.video_id, pa.string()),
            "split": pa.array(caps.split, pa.string()),
            "caption": pa.array(caps.caption, pa.string()),
            "tokens": fixed_list(cap_tokens.astype(np.int32)),
            "embedding": fixed_list(cap_emb.astype(np.float32)),
        }
    )
    pq.write_table(cap_table, out / "captions.parquet", compression="zstd")
    pseudo_table = pa.table(
        {
            "video_id": pa.array(pseudo.video_id, pa.string()),
            "frame": pa.array(pseudo.frame, pa.int32()),
            "caption": pa.array(pseudo.caption, pa.string()),
            "tokens": fixed_list(np.stack(pseudo.tokens.to_list()).astype(np.int32)),
            "embedding": fixed_list(np.stack(pseudo.embedding.to_list()).astype(np.float32)),
        }
    )
    pq.write_table(pseudo_table, out / "pseudo.parquet", compression="zstd")
    videos.to_csv(out / "videos.csv", index=False)
    write_json(out / "meta.json", meta)


def save_features(features: Features, out_dir: str | Path) -> Path:
    """Write in-memory ``features`` (e.g. a synthetic cache for tests and benchmarks) in the features
    stage's layout, atomically; :func:`load_features` reads it back."""
    n_v, n_f = len(features.video_ids), features.num_frames
    size = int(features.pixels.shape[-1])
    frame_index = np.arange(n_f, dtype=np.int32)
    frames = pd.DataFrame(
        {"video_id": np.repeat(features.video_ids, n_f), "frame": np.tile(frame_index, n_v)}
    )
    pseudo = frames.assign(
        caption="a frame",
        tokens=list(features.pseudo_tokens.reshape(n_v * n_f, -1).numpy()),
        embedding=list(features.pseudo_emb.reshape(n_v * n_f, -1).numpy()),
    )
    videos = pd.DataFrame({"video_id": features.video_ids, "split": features.video_split})
    meta = {**features.meta, "image_size": size, "num_frames": n_f, "videos": n_v, "frames": n_v * n_f}
    with atomic_dir(out_dir) as tmp:
        with PixelWriter(tmp / PIXELS_FILE, size) as writer:
            for i, video_id in enumerate(tqdm(features.video_ids, desc="pixels", leave=False)):
                writer.write(video_id, frame_index, features.pixels[i].numpy())
        write_tables(
            tmp,
            meta,
            frames,
            features.frame_emb.reshape(n_v * n_f, -1).numpy(),
            features.captions,
            features.cap_tokens.numpy(),
            features.cap_emb.numpy(),
            pseudo,
            videos,
        )
        if not features.twins.empty:
            features.twins.to_csv(tmp / "twins.csv", index=False)
        write_manifest(tmp)
    return Path(out_dir)


class _Lazy:
    """A :class:`Features` field read from the cache on first use (``None`` when not given)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, "_" + name

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return None  # the dataclass default
        value = obj.__dict__.get(self.slot)
        if value is None:
            value = obj.__dict__[self.slot] = _read_embedding(obj, self.name)
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.slot] = value


@dataclass(kw_only=True)
class Features:
    """The feature cache: videos in a fixed order (sorted ids), F frames each.

    ``pixels`` is a :class:`VideoPixels` reader when loaded from disk (or a dense uint8 tensor for features
    built in memory); ``frame_emb``, ``pseudo_emb`` and ``cap_emb`` (frozen embeddings, used by the
    zero-shot baseline and analysis, never by training) are read on first use.
    """

    meta: dict[str, Any]
    video_ids: list[str]
    video_split: np.ndarray  # [V] str
    pixels: VideoPixels | torch.Tensor  # [V, F, 3, S, S] uint8
    pseudo_tokens: torch.Tensor  # [V, F, L] int64
    captions: pd.DataFrame  # caption_id, video_id, split, caption, video_index
    cap_tokens: torch.Tensor  # [C, L] int64
    twins: pd.DataFrame  # video_id, twin_id, kind, split (empty when absent)
    frame_emb: torch.Tensor = _Lazy()  # [V, F, D] float32 (normalised)
    pseudo_emb: torch.Tensor = _Lazy()  # [V, F, D]
    cap_emb: torch.Tensor = _Lazy()  # [C, D]
    path: Path | None = None  # the cache directory (None: built in memory)
    digest: str = ""  # content digest of the cache files (set by load_features)

    def fingerprint(self) -> str:
        """Content hash of everything training reads: the cache files' bytes when loaded from disk,
        else (features built in memory) the tensors and caption table themselves."""
        if self.digest:
            return self.digest
        table = self.captions[["video_id", "split", "caption", "video_index"]].to_json(orient="split")
        meta = json.dumps(self.meta, sort_keys=True)
        return tensors_digest(
            [
                ("meta", np.frombuffer(meta.encode(), np.uint8)),
                ("videos", np.frombuffer("\n".join(self.video_ids).encode(), np.uint8)),
                ("split", np.frombuffer("\n".join(self.video_split).encode(), np.uint8)),
                ("pixels", self.pixels),
                ("frame_emb", self.frame_emb),
                ("pseudo_tokens", self.pseudo_tokens),
                ("pseudo_emb", self.pseudo_emb),
                ("captions", np.frombuffer(table.encode(), np.uint8)),
                ("cap_tokens", self.cap_tokens),
                ("cap_emb", self.cap_emb),
                ("twins", np.frombuffer(self.twins.to_json(orient="split").encode(), np.uint8)),
            ]
        )

    @property
    def num_frames(self) -> int:
        """F, frames per video."""
        return int(self.pixels.shape[1])

    def split_videos(self, split: str) -> np.ndarray:
        """Indices of the videos in ``split``."""
        return np.flatnonzero(self.video_split == split)

    def split_captions(self, split: str) -> pd.DataFrame:
        return self.captions[self.captions.split == split]


def cache_digest(path: str | Path, verify: bool = False) -> str:
    """The content digest of a feature cache directory, recorded in its manifest when it was written, after
    a cheap check of its files (sizes and modification times; a file whose time moved is hashed once);
    ``verify``: hash every file. :class:`FeaturesError` when a file is missing, foreign or damaged."""
    try:
        return check_manifest(path, RERUN, verify=verify)
    except ManifestError as exc:
        raise FeaturesError(str(exc)) from None


def _frame_order(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Row order sorting ``table`` by (video_id, frame), and the video ids in that order."""
    vid = np.asarray(table.column("video_id").to_pylist())
    order = np.lexsort((table.column("frame").to_numpy(), vid))
    return order, vid[order]


def _read_embedding(features: Features, name: str) -> torch.Tensor:
    if features.path is None:
        raise FeaturesError(f"features built in memory have no {name}")
    path = features.path
    if name == "cap_emb":
        table = pq.read_table(path / "captions.parquet", columns=["embedding"])
        return torch.from_numpy(to_numpy(table.column("embedding")).copy())
    file = "frames.parquet" if name == "frame_emb" else "pseudo.parquet"
    table = pq.read_table(path / file, columns=["video_id", "frame", "embedding"])
    order, _ = _frame_order(table)
    n_v, n_f = len(features.video_ids), features.num_frames
    emb = to_numpy(table.column("embedding"))[order].reshape(n_v, n_f, -1)
    return torch.from_numpy(np.ascontiguousarray(emb))


def load_features(path: str | Path, verify: bool = False) -> Features:
    """Open the feature cache written by the features stage (pixels and embeddings stay on disk).

    Its files are checked against the manifest cheaply (sizes and times, :func:`cache_digest`), not read
    whole; ``verify`` hashes every file. The content digest recorded at write time is the cache's
    :meth:`Features.fingerprint` (the training checkpoint key's data part)."""
    path = Path(path)
    if not (path / "meta.json").exists():
        raise FeaturesError(f"{path}/meta.json not found: run the features stage first (dvc repro features)")
    if not (path / PIXELS_FILE).exists():
        raise FeaturesError(f"{path}/{PIXELS_FILE} not found (a cache from an older version?): {RERUN}")
    digest = cache_digest(path, verify=verify)
    meta = read_json(path / "meta.json")
    frames = pq.read_table(path / "frames.parquet", columns=["video_id", "frame"])
    order, sorted_vid = _frame_order(frames)
    video_ids, counts = np.unique(sorted_vid, return_counts=True)
    if len(set(counts)) > 1:
        raise FeaturesError(f"videos have different frame counts ({sorted(set(counts))}) in {path}")
    n_f = int(counts[0]) if len(counts) else 0
    n_v = len(video_ids)
    # pixels.arrow holds one batch per video in frames.parquet's row order: video -> its batch index
    store_vid = np.asarray(frames.column("video_id").to_pylist())
    starts = np.r_[0, np.flatnonzero(store_vid[1:] != store_vid[:-1]) + 1] if len(store_vid) else []
    if len(starts) != n_v:  # a video's rows in more than one run: the batches would not match the videos
        raise FeaturesError(f"{path}/frames.parquet: a video's frames are not consecutive: {RERUN}")
    batch_index = {v: b for b, v in enumerate(store_vid[starts])}
    batch_of = np.array([batch_index[v] for v in video_ids], dtype=np.int64)
    stored, width = pixel_file_shape(path / PIXELS_FILE)
    size = int(meta["image_size"])
    if stored != n_v or width != 3 * size * size:
        raise FeaturesError(
            f"{path}/{PIXELS_FILE} holds {stored} videos of {width} values per frame, frames.parquet "
            f"{n_v} videos at {size} px: {RERUN}"
        )

    pseudo = pq.read_table(path / "pseudo.parquet", columns=["video_id", "frame", "tokens"])
    porder, pvid = _frame_order(pseudo)
    if not np.array_equal(pvid, sorted_vid):
        raise FeaturesError(f"pseudo.parquet and frames.parquet disagree in {path}")
    pseudo_tokens = to_numpy(pseudo.column("tokens"))[porder].reshape(n_v, n_f, -1)

    videos = pd.read_csv(path / "videos.csv", dtype={"video_id": str}).set_index("video_id")
    video_split = videos.loc[list(video_ids), "split"].to_numpy().astype(str)

    caps_t = pq.read_table(
        path / "captions.parquet", columns=["caption_id", "video_id", "split", "caption", "tokens"]
    )
    captions = caps_t.select(["caption_id", "video_id", "split", "caption"]).to_pandas()
    index = {v: i for i, v in enumerate(video_ids)}
    captions["video_index"] = captions.video_id.map(index).astype(np.int64)
    twins_path = path / "twins.csv"
    twins = (
        pd.read_csv(twins_path, dtype={"video_id": str, "twin_id": str})
        if twins_path.exists()
        else pd.DataFrame(columns=["video_id", "twin_id", "kind", "split"])
    )
    return Features(
        meta=meta,
        video_ids=list(video_ids),
        video_split=video_split,
        pixels=VideoPixels(path / PIXELS_FILE, batch_of, n_f, size),
        pseudo_tokens=torch.from_numpy(pseudo_tokens.astype(np.int64)),
        captions=captions,
        cap_tokens=torch.from_numpy(to_numpy(caps_t.column("tokens")).astype(np.int64)),
        twins=twins,
        path=path,
        digest=digest,
    )
