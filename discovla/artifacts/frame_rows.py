"""Row ranges of the frames store (:mod:`discovla.artifacts.frames`), for readers that split it into parts
(the ``ray`` engine of the captions stage): which batches
:func:`~discovla.artifacts.frames.iter_frame_batches` would cut from a shard, and the rows ``start:stop`` of
one shard. A module of its own so that the store's
main reader, which the features and report stages depend on, stays as it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from discovla.artifacts.frames import KEYS, _open_shard, decode_frames


def shard_batch_sizes(shard: str | Path, batch_rows: int) -> list[int]:
    """Row counts of the batches :func:`~discovla.artifacts.frames.iter_frame_batches` yields from ``shard``
    (keys read, no image), so that a reader of row ranges can cut the very same batches."""
    pf, _ = _open_shard(Path(shard))
    return [b.num_rows for b in pf.iter_batches(batch_size=batch_rows, columns=KEYS)]


def read_frame_rows(shard: str | Path, start: int, stop: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows ``start:stop`` of one shard: keys (``video_id, frame``) and decoded uint8 ``[N, H, W, 3]``
    images, as :func:`~discovla.artifacts.frames.iter_frame_batches` gives them; reads only the row groups
    holding those rows."""
    pf, size = _open_shard(Path(shard))
    ends = np.cumsum([pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)])
    first = int(np.searchsorted(ends, start, side="right"))
    last = int(np.searchsorted(ends, max(start, stop - 1), side="right"))
    groups = list(range(first, min(last, len(ends) - 1) + 1))
    table = pf.read_row_groups(groups, columns=[*KEYS, "image"]) if groups else pf.schema_arrow.empty_table()
    offset = int(ends[first - 1]) if first > 0 else 0
    table = table.slice(start - offset, stop - start)
    return table.select(KEYS).to_pandas(), decode_frames(table.column("image"), size)
