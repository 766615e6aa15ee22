"""Feature cache: everything training and evaluation read, computed once, read back in batches from disk.

The features stage decodes the sampled frames once and runs the frozen backbone once. It writes
(docs/formats.md):

- ``pixels.arrow``: the exact pixels the first trainable layer sees (uint8 CHW at the backbone's image
  size; mean/std normalisation is applied on the fly), an uncompressed Arrow IPC file with ONE record
  batch per video (``video_id, frame, pixels``), in the frames store's order. Readers fetch single videos
  by batch index (:class:`VideoPixels`), so host memory does not grow with the dataset; pyarrow
  (``pyarrow.ipc.open_file``) and pandas (``pandas.read_feather``) open it as a table;
- ``frames.parquet``: per frame, the frozen L2-normalised image embedding (zero-shot baseline, analysis);
- ``captions.parquet``: per real caption, token ids and the frozen text embedding;
- ``pseudo.parquet``: per frame, its pseudo caption, token ids and frozen text embedding;
- ``videos.csv``, ``twins.csv`` (shapes world) and ``meta.json``.

The builder streams too: frames are decoded, embedded and written a batch at a time. Training never
decodes video or images: :func:`load_features` returns the small tensors (token ids, the caption table)
dense, the pixels as a :class:`VideoPixels` reader, and the frozen embeddings on first use.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from discovla.artifacts.captions import read_captions
from discovla.artifacts.frames import iter_frame_batches, read_frames_index, read_videos
from discovla.batching import batches
from discovla.errors import DiscoVLAError
from discovla.io import atomic_dir, read_json, write_json
from discovla.provenance import files_digest, tensors_digest

PIXELS_FILE = "pixels.arrow"


class FeaturesError(DiscoVLAError, ValueError):
    """A feature cache (or its inputs) that is missing or inconsistent, with what to rerun."""


def fixed_list(arr: np.ndarray) -> pa.FixedSizeListArray:
    """A 2-D numpy array as an Arrow fixed-size list column (one row per array row)."""
    arr = np.ascontiguousarray(arr)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])


def to_numpy(column: pa.ChunkedArray | pa.Array, dtype: Any = None) -> np.ndarray:
    """An Arrow fixed-size list column back to a 2-D numpy array (bit-exact)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    width = column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False)
    out = flat.reshape(len(column), width)
    return out.astype(dtype, copy=False) if dtype is not None else out


def _embed(encode: Any, x: np.ndarray, batch_size: int, desc: str) -> np.ndarray:
    """``encode`` (a backbone's batched, normalising encoder) over ``x`` with a progress bar."""
    chunks = list(batches(len(x), batch_size))
    out = [encode(torch.from_numpy(x[sl]), batch_size).numpy() for sl in tqdm(chunks, desc=desc, leave=False)]
    return np.concatenate(out).astype(np.float32)


def _video_groups(
    frames_dir: str | Path, batch_rows: int
) -> Iterator[tuple[np.ndarray, list[tuple[str, np.ndarray, np.ndarray]]]]:
    """Per batch of the frames store: its CHW pixels, and the videos it completes
    (``(video_id, frames, pixels)``; a video split across batches is completed by the later one)."""
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (ids, frames, pixels) of an open video
    for keys, images in iter_frame_batches(frames_dir, batch_rows):
        pixels = images.transpose(0, 3, 1, 2)  # N,3,S,S uint8 (a view; copied per video below)
        ids, fr = keys.video_id.to_numpy(), keys.frame.to_numpy(np.int32)
        done = []
        bounds = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        starts, ends = np.r_[0, bounds], np.r_[bounds, len(ids)]
        for s, e in zip(starts, ends, strict=True):
            part = (ids[s:e], fr[s:e], pixels[s:e])
            if pending and pending[0][0][0] != ids[s]:
                done.append(_close(pending))
                pending = []
            pending.append(part)
            if e < len(ids):  # another video starts in this batch: this one is complete
                done.append(_close(pending))
                pending = []
        yield pixels, done
    if pending:
        yield np.zeros((0,), np.uint8), [_close(pending)]


def _close(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[str, np.ndarray, np.ndarray]:
    frames = np.concatenate([p[1] for p in parts])
    pixels = np.concatenate([p[2] for p in parts])
    order = np.argsort(frames, kind="stable")
    return str(parts[0][0][0]), frames[order], np.ascontiguousarray(pixels[order])


def build_features(
    backbone: Any,
    frames_dir: str | Path,
    captions_path: str | Path,
    dataset_captions: pd.DataFrame,
    out_dir: str | Path,
    batch_size: int = 256,
    twins_csv: str | Path | None = None,
) -> dict[str, Any]:
    """Compute and write the feature cache. Returns the summary also stored in ``meta.json``.

    ``dataset_captions`` has columns caption_id, video_id, caption, split (the dataset's real captions);
    captions of videos without frames (skipped by the frames stage) are dropped and counted. The dataset
    readers (:func:`discovla.data.load_dataset`) have already refused empty or whitespace-only captions.
    Frames are read, embedded and written ``batch_size`` at a time: memory does not grow with the dataset.
    """
    frames = read_frames_index(frames_dir)[["video_id", "frame"]]
    videos = read_videos(frames_dir)
    pseudo = read_captions(captions_path)
    key = ["video_id", "frame"]
    pseudo = frames[key].merge(pseudo, on=key, how="left", validate="one_to_one")
    if pseudo.caption.isna().any():
        row = pseudo[pseudo.caption.isna()].iloc[0]
        raise FeaturesError(
            f"frame {row.video_id}#{row.frame} has no pseudo caption: rerun the captions stage"
        )

    have = set(videos.video_id)
    caps = dataset_captions[dataset_captions.video_id.isin(have)].reset_index(drop=True)
    dropped = len(dataset_captions) - len(caps)
    cap_tokens = backbone.tokenize(list(caps.caption)).numpy().astype(np.int32)
    pseudo_tokens = backbone.tokenize(list(pseudo.caption)).numpy().astype(np.int32)
    size = backbone.image_size
    with atomic_dir(out_dir) as tmp:
        with _PixelWriter(tmp / PIXELS_FILE, size) as writer:
            frame_emb = _embed_and_write_pixels(backbone, frames_dir, writer, batch_size, len(frames))
        cap_emb = _embed(backbone.encode_texts, cap_tokens, batch_size, "caption embeddings")
        pseudo_emb = _embed(backbone.encode_texts, pseudo_tokens, batch_size, "pseudo-caption embeddings")
        meta = {
            "backbone": backbone.name,
            "pretrained": backbone.pretrained,
            "image_size": size,
            "context_length": int(cap_tokens.shape[1]),
            "embed_dim": int(backbone.embed_dim),
            "mean": list(backbone.mean),
            "std": list(backbone.std),
            "logit_scale": float(backbone.logit_scale),
            "videos": int(len(videos)),
            "frames": int(len(frames)),
            "num_frames": int(frames.groupby("video_id").size().max()) if len(frames) else 0,
            "captions": int(len(caps)),
            "captions_dropped_no_frames": int(dropped),
        }
        pseudo = pseudo.assign(tokens=list(pseudo_tokens), embedding=list(pseudo_emb))
        _write_tables(tmp, meta, frames, frame_emb, caps, cap_tokens, cap_emb, pseudo, videos)
        if twins_csv is not None and Path(twins_csv).exists():
            shutil.copyfile(twins_csv, tmp / "twins.csv")
    return meta


def _write_tables(
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


class _PixelWriter:
    """Writes ``pixels.arrow``: one record batch (video_id, frame, pixels) per video."""

    def __init__(self, path: Path, size: int) -> None:
        self.size = size
        self.schema = pa.schema(
            [
                ("video_id", pa.string()),
                ("frame", pa.int32()),
                ("pixels", pa.list_(pa.uint8(), 3 * size * size)),
            ]
        )
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, self.schema)

    def write(self, video_id: str, frames: np.ndarray, pixels: np.ndarray) -> None:
        """One video: ``frames`` [F] and its ``pixels`` uint8 [F, 3, S, S]."""
        batch = pa.record_batch(
            [
                pa.array([video_id] * len(frames), pa.string()),
                pa.array(frames, pa.int32()),
                fixed_list(np.ascontiguousarray(pixels).reshape(len(pixels), -1)),
            ],
            schema=self.schema,
        )
        self._writer.write_batch(batch)

    def __enter__(self) -> _PixelWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.close()
        self._sink.close()


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
        with _PixelWriter(tmp / PIXELS_FILE, size) as writer:
            for i, video_id in enumerate(tqdm(features.video_ids, desc="pixels", leave=False)):
                writer.write(video_id, frame_index, features.pixels[i].numpy())
        _write_tables(
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
    return Path(out_dir)


def _embed_and_write_pixels(
    backbone: Any, frames_dir: str | Path, writer: _PixelWriter, batch_size: int, total: int
) -> np.ndarray:
    """Stream the frames store into ``writer`` (one video at a time) and return the frozen frame
    embeddings, in the store's row order, computed ``batch_size`` frames at a time."""
    emb = []
    size = writer.size
    with tqdm(total=total, desc="frame embeddings", unit="frame", leave=False) as bar:
        for pixels, done in _video_groups(frames_dir, batch_size):
            if len(pixels):
                if pixels.shape[2:] != (size, size):
                    raise FeaturesError(
                        f"frames are {pixels.shape[2]}x{pixels.shape[3]} but {backbone.name} expects "
                        f"{size}x{size}: set frames.size: {size} in params.yaml"
                    )
                emb.append(backbone.encode_images(torch.from_numpy(pixels.copy()), batch_size).numpy())
                bar.update(len(pixels))
            for video_id, frame, pix in done:
                writer.write(video_id, frame, pix)
    if not emb:
        return np.zeros((0, backbone.embed_dim), np.float32)
    return np.concatenate(emb).astype(np.float32)


class VideoPixels:
    """The cache's pixels, read from ``pixels.arrow`` one video (record batch) at a time.

    Indexing mirrors a ``uint8 [V, F, 3, S, S]`` tensor along the video axis: ``pixels[i]`` is
    ``[F, 3, S, S]``, ``pixels[idx]`` (a sequence, array, tensor or slice of video indices) is
    ``[len(idx), F, 3, S, S]``. Each process opens its own file handle on first use (DataLoader workers
    included) and reads with positioned reads, not a memory map, so resident memory stays at the batches
    being read.
    """

    def __init__(self, path: str | Path, batch_of: np.ndarray, frames: int, size: int) -> None:
        self.path = Path(path)
        self.batch_of = np.asarray(batch_of, dtype=np.int64)  # video index -> record batch
        self.shape = (len(self.batch_of), frames, 3, size, size)
        self.dtype = torch.uint8
        self._reader: pa.ipc.RecordBatchFileReader | None = None
        self._pid = -1

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:  # workers reopen the file
        return {**self.__dict__, "_reader": None, "_pid": -1}

    def _open(self) -> pa.ipc.RecordBatchFileReader:
        if self._reader is None or self._pid != os.getpid():
            self._reader = pa.ipc.open_file(pa.OSFile(str(self.path)))
            self._pid = os.getpid()
        return self._reader

    def _video(self, i: int, out: np.ndarray) -> None:
        batch = self._open().get_batch(int(self.batch_of[i]))
        n_f = self.shape[1]
        if batch.num_rows != n_f:
            raise FeaturesError(f"{self.path}: video {i} has {batch.num_rows} frames, expected {n_f}")
        flat = batch.column(2).values.to_numpy(zero_copy_only=False)
        out[...] = flat.reshape(self.shape[1:])

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        if np.ndim(index) == 0:
            i = int(index)
            i = i + len(self) if i < 0 else i
            out = np.empty(self.shape[1:], np.uint8)
            self._video(i, out)
            return torch.from_numpy(out)
        idx = np.asarray(index, dtype=np.int64)
        idx = np.where(idx < 0, idx + len(self), idx)
        out = np.empty((len(idx), *self.shape[1:]), np.uint8)
        for k, i in enumerate(idx):
            self._video(int(i), out[k])
        return torch.from_numpy(out)


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


def cache_digest(path: str | Path) -> str:
    """The content digest of a feature cache directory (every file's bytes, streamed)."""
    path = Path(path)
    return files_digest((f for f in path.iterdir() if f.is_file()), root=path)


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


def load_features(path: str | Path) -> Features:
    """Open the feature cache written by :func:`build_features` (pixels and embeddings stay on disk)."""
    path = Path(path)
    if not (path / "meta.json").exists():
        raise FeaturesError(f"{path}/meta.json not found: run the features stage first (dvc repro features)")
    if not (path / PIXELS_FILE).exists():
        raise FeaturesError(
            f"{path}/{PIXELS_FILE} not found (a cache from an older version?): rerun the features stage"
        )
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
    batch_index = {v: b for b, v in enumerate(store_vid[starts])}
    if len(batch_index) != n_v:
        raise FeaturesError(f"{path}/frames.parquet: a video's frames are not consecutive")
    batch_of = np.array([batch_index[v] for v in video_ids], dtype=np.int64)
    with pa.OSFile(str(path / PIXELS_FILE)) as f:
        reader = pa.ipc.open_file(f)
        stored, width = reader.num_record_batches, reader.schema.field("pixels").type.list_size
    size = int(meta["image_size"])
    if stored != n_v or width != 3 * size * size:
        raise FeaturesError(
            f"{path}/{PIXELS_FILE} holds {stored} videos of {width} values per frame, frames.parquet "
            f"{n_v} videos at {size} px: rerun the features stage"
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
        digest=cache_digest(path),
    )
