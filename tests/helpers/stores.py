"""Pipeline artifacts written directly in their documented layouts, for tests that start mid-pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from discovla.artifacts.frames import (
    FRAMES_SCHEMA,
    PARQUET_OPTIONS,
    SKIPPED_COLUMNS,
    VIDEOS_COLUMNS,
    encode_frames,
    frames_schema,
)


def write_frames_store(out: Path, ids: list[str], splits: list[str], frames: int, size: int) -> None:
    """A frames store in the documented layout (one shard, videos.csv, skipped.csv): per video a coloured
    background with a white square moving right, so every strip shows motion."""
    rng = np.random.default_rng(0)
    cols: dict[str, list] = {name: [] for name in FRAMES_SCHEMA.names}
    for vid in ids:
        colour = rng.integers(0, 200, size=3, dtype=np.uint8)
        for f in range(frames):
            im = np.broadcast_to(colour, (size, size, 3)).copy()
            im[10:18, 4 + 6 * f : 12 + 6 * f] = 255
            cols["video_id"].append(vid)
            cols["frame"].append(f)
            cols["timestamp"].append(0.25 * f)
            cols["image"] += encode_frames(im[None])
    out.mkdir(parents=True)
    table = pa.table(cols, schema=frames_schema(size))
    pq.write_table(table, out / "shard-00000.parquet", row_group_size=frames, **PARQUET_OPTIONS)
    videos = pd.DataFrame([[v, s, 20, 2.0, False] for v, s in zip(ids, splits, strict=True)])
    videos.columns = VIDEOS_COLUMNS
    videos.to_csv(out / "videos.csv", index=False)
    pd.DataFrame(columns=SKIPPED_COLUMNS).to_csv(out / "skipped.csv", index=False)
