"""Feature cache: everything training and evaluation read, in Parquet, computed once.

The features stage decodes the sampled frames once and runs the frozen backbone once. It writes
(docs/formats.md):

- ``frames.parquet``: per frame, the exact pixels the first trainable layer sees (uint8 CHW at the
  backbone's image size; mean/std normalisation is applied on the fly) and the frozen L2-normalised
  image embedding (zero-shot baseline, analysis);
- ``captions.parquet``: per real caption, token ids and the frozen text embedding;
- ``pseudo.parquet``: per frame, its pseudo caption, token ids and frozen text embedding;
- ``twins.csv`` (shapes world) and ``meta.json``.

Training never decodes video or images: :func:`load_features` returns dense tensors.
"""

from __future__ import annotations

import json
import shutil
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
from discovla.artifacts.frames import read_frames, read_videos
from discovla.batching import batches
from discovla.errors import DiscoVLAError
from discovla.io import atomic_dir, read_json, write_json
from discovla.provenance import files_digest, tensors_digest


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
    """
    frames, images = read_frames(frames_dir)
    videos = read_videos(frames_dir)
    pseudo = read_captions(captions_path)
    key = ["video_id", "frame"]
    pseudo = frames[key].merge(pseudo, on=key, how="left", validate="one_to_one")
    if pseudo.caption.isna().any():
        row = pseudo[pseudo.caption.isna()].iloc[0]
        raise FeaturesError(
            f"frame {row.video_id}#{row.frame} has no pseudo caption: rerun the captions stage"
        )

    size = backbone.image_size
    if images.shape[1:3] != (size, size):
        raise FeaturesError(
            f"frames are {images.shape[1]}x{images.shape[2]} but {backbone.name} expects {size}x{size}: "
            f"set frames.size: {size} in params.yaml"
        )
    pixels = images.transpose(0, 3, 1, 2).copy()  # N,3,S,S uint8

    have = set(videos.video_id)
    caps = dataset_captions[dataset_captions.video_id.isin(have)].reset_index(drop=True)
    dropped = len(dataset_captions) - len(caps)
    cap_tokens = backbone.tokenize(list(caps.caption)).numpy().astype(np.int32)
    pseudo_tokens = backbone.tokenize(list(pseudo.caption)).numpy().astype(np.int32)

    frame_emb = _embed(backbone.encode_images, pixels, batch_size, "frame embeddings")
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
        "num_frames": int(frames.groupby("video_id").size().max()),
        "captions": int(len(caps)),
        "captions_dropped_no_frames": int(dropped),
    }
    with atomic_dir(out_dir) as tmp:
        frame_table = pa.table(
            {
                "video_id": pa.array(frames.video_id, pa.string()),
                "frame": pa.array(frames.frame, pa.int32()),
                "pixels": fixed_list(pixels.reshape(len(pixels), -1)),
                "embedding": fixed_list(frame_emb.astype(np.float32)),
            }
        )
        pq.write_table(frame_table, tmp / "frames.parquet", compression="zstd")
        cap_table = pa.table(
            {
                "caption_id": pa.array(caps.caption_id, pa.int64()),
                "video_id": pa.array(caps.video_id, pa.string()),
                "split": pa.array(caps.split, pa.string()),
                "caption": pa.array(caps.caption, pa.string()),
                "tokens": fixed_list(cap_tokens),
                "embedding": fixed_list(cap_emb.astype(np.float32)),
            }
        )
        pq.write_table(cap_table, tmp / "captions.parquet", compression="zstd")
        pseudo_table = pa.table(
            {
                "video_id": pa.array(pseudo.video_id, pa.string()),
                "frame": pa.array(pseudo.frame, pa.int32()),
                "caption": pa.array(pseudo.caption, pa.string()),
                "tokens": fixed_list(pseudo_tokens),
                "embedding": fixed_list(pseudo_emb.astype(np.float32)),
            }
        )
        pq.write_table(pseudo_table, tmp / "pseudo.parquet", compression="zstd")
        videos.to_csv(tmp / "videos.csv", index=False)
        if twins_csv is not None and Path(twins_csv).exists():
            shutil.copyfile(twins_csv, tmp / "twins.csv")
        write_json(tmp / "meta.json", meta)
    return meta


@dataclass
class Features:
    """Dense tensors of the feature cache (videos in a fixed order, F frames each)."""

    meta: dict[str, Any]
    video_ids: list[str]
    video_split: np.ndarray  # [V] str
    pixels: torch.Tensor  # [V, F, 3, S, S] uint8
    frame_emb: torch.Tensor  # [V, F, D] float32 (normalised)
    pseudo_tokens: torch.Tensor  # [V, F, L] int64
    pseudo_emb: torch.Tensor  # [V, F, D]
    captions: pd.DataFrame  # caption_id, video_id, split, caption, video_index
    cap_tokens: torch.Tensor  # [C, L] int64
    cap_emb: torch.Tensor  # [C, D]
    twins: pd.DataFrame  # video_id, twin_id, kind, split (empty when absent)
    digest: str = ""  # sha256 of the cache files (set by load_features)

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

    def split_videos(self, split: str) -> np.ndarray:
        """Indices of the videos in ``split``."""
        return np.flatnonzero(self.video_split == split)

    def split_captions(self, split: str) -> pd.DataFrame:
        return self.captions[self.captions.split == split]


def load_features(path: str | Path) -> Features:
    """Read the feature cache written by :func:`build_features`."""
    path = Path(path)
    if not (path / "meta.json").exists():
        raise FeaturesError(f"{path}/meta.json not found: run the features stage first (dvc repro features)")
    meta = read_json(path / "meta.json")
    size = meta["image_size"]
    frames = pq.read_table(path / "frames.parquet")
    vid = np.asarray(frames.column("video_id").to_pylist())
    fr = frames.column("frame").to_numpy()
    order = np.lexsort((fr, vid))
    video_ids, counts = np.unique(vid[order], return_counts=True)
    if len(set(counts)) != 1:
        raise FeaturesError(f"videos have different frame counts ({sorted(set(counts))}) in {path}")
    n_f = int(counts[0])
    n_v = len(video_ids)
    pixels = to_numpy(frames.column("pixels"))[order].reshape(n_v, n_f, 3, size, size)
    frame_emb = to_numpy(frames.column("embedding"))[order].reshape(n_v, n_f, -1)

    pseudo = pq.read_table(path / "pseudo.parquet")
    pv = np.asarray(pseudo.column("video_id").to_pylist())
    porder = np.lexsort((pseudo.column("frame").to_numpy(), pv))
    if not np.array_equal(pv[porder], vid[order]):
        raise FeaturesError(f"pseudo.parquet and frames.parquet disagree in {path}")
    pseudo_tokens = to_numpy(pseudo.column("tokens"))[porder].reshape(n_v, n_f, -1)
    pseudo_emb = to_numpy(pseudo.column("embedding"))[porder].reshape(n_v, n_f, -1)

    videos = pd.read_csv(path / "videos.csv", dtype={"video_id": str}).set_index("video_id")
    video_split = videos.loc[list(video_ids), "split"].to_numpy().astype(str)

    caps_t = pq.read_table(path / "captions.parquet")
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
        pixels=torch.from_numpy(np.ascontiguousarray(pixels)),
        frame_emb=torch.from_numpy(np.ascontiguousarray(frame_emb)),
        pseudo_tokens=torch.from_numpy(pseudo_tokens.astype(np.int64)),
        pseudo_emb=torch.from_numpy(np.ascontiguousarray(pseudo_emb)),
        captions=captions,
        cap_tokens=torch.from_numpy(to_numpy(caps_t.column("tokens")).astype(np.int64)),
        cap_emb=torch.from_numpy(to_numpy(caps_t.column("embedding")).copy()),
        twins=twins,
        digest=files_digest((f for f in path.iterdir() if f.is_file()), root=path),
    )
