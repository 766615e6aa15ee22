"""The frames store (output of the ``frames`` stage): its format and its only reader.

Layout (docs/formats.md, format version 2), in a directory replaced atomically:

- ``shard-00000.parquet``, ...: one row per sampled frame, ``video_id (str), frame (int32, 0..F-1),
  timestamp (float64 seconds, the frame's real pts), image (binary: raw RGB24, size x size x 3 bytes,
  row-major)``; rows in the dataset's video order, then frame; at most ``shard_rows`` rows per shard; ONE
  ROW GROUP PER VIDEO (a video cut by a shard boundary: one in each shard), so a read of some videos
  leaves every other video's images unread (statistics on ``video_id``, none on ``image``); zstd at
  level 1 (raw pixels: encoding costs almost nothing, see ``benchmarks/real_videos.py``; about 0.55-0.6
  of the raw size on real footage, 1.4-1.5x what PNG took). The schema metadata records
  ``discovla.frames_format`` (``2``) and ``discovla.frame_size``. A store without any frame still has
  one (empty) shard, so readers always find the schema.
- ``videos.csv``: ``video_id, split, source_frames, duration, repeated`` for every sampled video.
- ``skipped.csv``: ``video_id, path, reason`` for every video that could not be sampled (reasons:
  :mod:`discovla.sampling`).

Every consumer (captions, features, the report) reads the store through this module
(:func:`read_frames_index`, :func:`iter_frame_batches`, :func:`read_frames`, :func:`read_frame_images`),
which imports none of the sampling machinery: the writer is :mod:`discovla.extraction`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from discovla.errors import DiscoVLAError

KEYS = ["video_id", "frame"]
FORMAT_VERSION = 2  # 1: PNG images, rows grouped freely
FRAMES_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("frame", pa.int32()),
        ("timestamp", pa.float64()),
        ("image", pa.binary()),
    ]
)
VIDEOS_COLUMNS = ["video_id", "split", "source_frames", "duration", "repeated"]
SKIPPED_COLUMNS = ["video_id", "path", "reason"]
PARQUET_OPTIONS = {
    "compression": "zstd",
    "compression_level": 1,
    "use_dictionary": ["video_id"],
    "write_statistics": ["video_id", "frame", "timestamp"],
}


class FramesStoreError(DiscoVLAError, ValueError):
    """A frames store that is missing or inconsistent, with what to rerun."""


def frames_schema(size: int) -> pa.Schema:
    """:data:`FRAMES_SCHEMA` with the format version and frame size in its metadata, as every shard has."""
    return FRAMES_SCHEMA.with_metadata(
        {b"discovla.frames_format": str(FORMAT_VERSION).encode(), b"discovla.frame_size": str(size).encode()}
    )


def encode_frames(frames: np.ndarray) -> list[bytes]:
    """The ``image`` cells of uint8 ``[N, size, size, 3]`` RGB frames (raw bytes, row-major)."""
    if (
        frames.dtype != np.uint8
        or frames.ndim != 4
        or frames.shape[3] != 3
        or frames.shape[1] != frames.shape[2]
    ):
        raise ValueError(f"frames must be uint8 [N, S, S, 3], got {frames.dtype} {list(frames.shape)}")
    return [np.ascontiguousarray(f).tobytes() for f in frames]


def decode_frames(images: pa.Array | pa.ChunkedArray, size: int) -> np.ndarray:
    """uint8 ``[N, size, size, 3]`` from an ``image`` column; :class:`FramesStoreError` for a cell that is not
    ``size * size * 3`` bytes."""
    arr = images.combine_chunks() if isinstance(images, pa.ChunkedArray) else images
    n, frame_bytes = len(arr), size * size * 3
    if n == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    offsets = np.frombuffer(arr.buffers()[1], np.int32, n + 1, arr.offset * 4)
    if arr.null_count or np.any(np.diff(offsets) != frame_bytes):
        raise FramesStoreError(f"frames store: an image is not {size}x{size} RGB ({frame_bytes} bytes)")
    data = np.frombuffer(arr.buffers()[2], np.uint8, n * frame_bytes, int(offsets[0]))
    return data.reshape(n, size, size, 3).copy()


# --------------------------------------------------------------------------------------------- reader


def frame_shards(frames_dir: str | Path) -> list[Path]:
    """The store's shards in order; :class:`FramesStoreError` when there are none."""
    shards = sorted(Path(frames_dir).glob("shard-*.parquet"))
    if not shards:
        raise FramesStoreError(f"no frames shards {frames_dir}/shard-*.parquet (run the frames stage first)")
    return shards


def _open_shard(shard: Path) -> tuple[pq.ParquetFile, int]:
    """The shard and its frame size; :class:`FramesStoreError` for another format version."""
    pf = pq.ParquetFile(shard)
    meta = pf.schema_arrow.metadata or {}
    version = int(meta.get(b"discovla.frames_format", b"1"))
    if version != FORMAT_VERSION:
        raise FramesStoreError(
            f"{shard}: frames store format {version}, this code reads format {FORMAT_VERSION} "
            "(raw RGB, one row group per video): re-run the frames stage"
        )
    return pf, int(meta[b"discovla.frame_size"])


def count_frames(frames_dir: str | Path) -> int:
    """Number of frame rows in the store (from the shards' metadata, no data read)."""
    return sum(pq.ParquetFile(s).metadata.num_rows for s in frame_shards(frames_dir))


def read_frames_index(frames_dir: str | Path) -> pd.DataFrame:
    """``video_id, frame, timestamp`` of every frame row, in shard order (images not read)."""
    cols = [*KEYS, "timestamp"]
    tables = [_open_shard(s)[0].read(columns=cols) for s in frame_shards(frames_dir)]
    df = pd.concat([t.to_pandas() for t in tables]).reset_index(drop=True)
    df["frame"] = df["frame"].astype("int32")
    if df.duplicated(KEYS).any():
        raise FramesStoreError(f"{frames_dir}: duplicate (video_id, frame) rows in the frames shards")
    return df


def iter_frame_batches(frames_dir: str | Path, batch_rows: int) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """Frame keys (``video_id, frame``) and decoded uint8 ``[N, H, W, 3]`` images, ``batch_rows`` at a time,
    in shard order."""
    for shard in frame_shards(frames_dir):
        pf, size = _open_shard(shard)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=[*KEYS, "image"]):
            keys = pa.Table.from_batches([batch]).select(KEYS).to_pandas()
            yield keys, decode_frames(batch.column("image"), size)


def read_frames(frames_dir: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Every frame row: keys (``video_id, frame``) and decoded uint8 ``[N, H, W, 3]`` images, in shard
    order."""
    keys, images = [], []
    for k, im in iter_frame_batches(frames_dir, 4096):
        keys.append(k)
        images.append(im)
    return pd.concat(keys, ignore_index=True), np.concatenate(images)


def _row_groups_of(pf: pq.ParquetFile, wanted: pa.Array) -> list[int]:
    """Row groups holding a row of one of ``wanted`` (from the ``video_id`` column alone: dictionary-encoded
    strings, a small part of a shard)."""
    ids = pf.read(columns=["video_id"]).column("video_id")
    rows = np.flatnonzero(pc.is_in(ids, value_set=wanted).to_numpy(zero_copy_only=False))
    if not rows.size:
        return []
    ends = np.cumsum([pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)])
    return np.unique(np.searchsorted(ends, rows, side="right")).tolist()


def read_frame_images(frames_dir: str | Path, video_ids: Iterable[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows of ``video_ids`` only: ``video_id, frame, timestamp`` and decoded uint8 ``[N, H, W, 3]``
    images, in shard order; keys and images exactly as :func:`read_frames` gives them for those videos
    (absent videos: no rows), timestamps as :func:`read_frames_index`.

    Finds the row groups holding those videos from the ``video_id`` column, reads only them (one video
    per row group in a store of this format) and decodes only the wanted rows: the images read follow the
    videos asked for, not the store's size."""
    wanted = pa.array(sorted({str(v) for v in video_ids}), pa.string())
    cols = [*KEYS, "timestamp"]
    keys: list[pd.DataFrame] = []
    images: list[np.ndarray] = []
    size = 0
    for shard in frame_shards(frames_dir):
        pf, size = _open_shard(shard)
        groups = _row_groups_of(pf, wanted) if len(wanted) else []
        if not groups:
            continue
        table = pf.read_row_groups(groups, columns=[*cols, "image"])
        table = table.filter(pc.is_in(table.column("video_id"), value_set=wanted))
        keys.append(table.select(cols).to_pandas())
        images.append(decode_frames(table.column("image"), size))
    if not keys:
        empty = pa.table({"video_id": pa.array([], pa.string()), "frame": pa.array([], pa.int32())})
        empty = empty.append_column("timestamp", pa.array([], pa.float64()))
        return empty.to_pandas(), np.zeros((0, size, size, 3), np.uint8)
    return pd.concat(keys, ignore_index=True), np.concatenate(images)


def read_videos(frames_dir: str | Path) -> pd.DataFrame:
    """``videos.csv``: one row per sampled video (video_id, split, source_frames, duration, repeated)."""
    path = Path(frames_dir) / "videos.csv"
    if not path.exists():
        raise FramesStoreError(f"{path} not found (run the frames stage first)")
    return pd.read_csv(path, dtype={"video_id": str})
