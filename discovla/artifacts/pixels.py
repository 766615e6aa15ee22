"""``pixels.arrow``, the feature cache's pixel file: one Arrow record batch per video, read a video at a time.

The exact pixels the first trainable layer sees (uint8 CHW at the backbone's image size; mean/std
normalisation is applied on the fly), an uncompressed Arrow IPC file (Feather v2) with ONE record batch per
video (``video_id, frame, pixels``). :class:`PixelWriter` writes it a video at a time; :class:`VideoPixels`
reads videos by batch index with positioned reads, so host memory does not grow with the dataset; pyarrow
(``pyarrow.ipc.open_file``) and pandas (``pandas.read_feather``) open it as a table. Also the two Arrow
helpers every cache table uses (:func:`fixed_list`, :func:`to_numpy`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from discovla.errors import DiscoVLAError

PIXELS_FILE = "pixels.arrow"


class PixelsError(DiscoVLAError, ValueError):
    """A pixel file that does not hold what its cache says, with what to rerun."""


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


class PixelWriter:
    """Writes ``pixels.arrow``: one record batch (video_id, frame, pixels) per video."""

    def __init__(self, path: str | Path, size: int) -> None:
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

    def __enter__(self) -> PixelWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.close()
        self._sink.close()


def pixel_file_shape(path: str | Path) -> tuple[int, int]:
    """(record batches, values per frame) of a pixel file, from its footer (no pixel is read)."""
    with pa.OSFile(str(path)) as f:
        reader = pa.ipc.open_file(f)
        return reader.num_record_batches, reader.schema.field("pixels").type.list_size


def _video_indices(index: Any, n: int) -> np.ndarray:
    """Video indices of ``index`` along an axis of length ``n``, as a tensor or array would read them: a
    boolean mask selects where it is true (its length must be ``n``), integers may be negative."""
    if isinstance(index, torch.Tensor):
        index = index.numpy()
    if isinstance(index, slice):
        return np.arange(n)[index]
    idx = np.asarray(index)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise IndexError(f"boolean index of shape {idx.shape} for {n} videos")
        return np.flatnonzero(idx)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise IndexError(f"video indices must be integers or a boolean mask, got {idx.dtype}")
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size and (idx.max() >= n or idx.min() < -n):
        raise IndexError(f"video index out of range for {n} videos")
    return np.where(idx < 0, idx + n, idx)


class VideoPixels:
    """The cache's pixels, read from ``pixels.arrow`` one video (record batch) at a time.

    Indexing mirrors a ``uint8 [V, F, 3, S, S]`` tensor along the video axis: ``pixels[i]`` is
    ``[F, 3, S, S]``; ``pixels[idx]`` (a sequence, array or tensor of video indices, a boolean mask over
    the videos, or a slice) is ``[len(idx), F, 3, S, S]``. Each process opens its own file handle on first
    use (DataLoader workers included) and reads with positioned reads, not a memory map, so resident memory
    stays at the batches being read.
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
            raise PixelsError(f"{self.path}: video {i} has {batch.num_rows} frames, expected {n_f}")
        flat = batch.column(2).values.to_numpy(zero_copy_only=False)
        out[...] = flat.reshape(self.shape[1:])

    def __getitem__(self, index: Any) -> torch.Tensor:
        if not isinstance(index, slice) and np.ndim(index) == 0:  # one video
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"video index {i} out of range for {len(self)} videos")
            out = np.empty(self.shape[1:], np.uint8)
            self._video(i % len(self), out)
            return torch.from_numpy(out)
        idx = _video_indices(index, len(self))
        out = np.empty((len(idx), *self.shape[1:]), np.uint8)
        for k, i in enumerate(idx):
            self._video(int(i), out[k])
        return torch.from_numpy(out)
