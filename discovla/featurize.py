"""Building the feature cache (the ``features`` stage): decode the sampled frames once, run the frozen
backbone once, and write :mod:`discovla.artifacts.features`' layout, a batch of frames at a time.

The producer's machinery (frames store, pseudo captions, backbone) lives here, apart from the cache's
reader, so that what training imports does not change when the producer does.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from discovla.artifacts.captions import read_captions
from discovla.artifacts.features import FeaturesError, write_tables
from discovla.artifacts.frames import iter_frame_batches, read_frames_index, read_videos
from discovla.artifacts.manifest import write_manifest
from discovla.artifacts.pixels import PIXELS_FILE, PixelWriter
from discovla.batching import batches
from discovla.io import atomic_dir


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
    captions of videos without frames (skipped by the frames stage) are dropped and counted. The
    dataset readers (:func:`discovla.data.registry.load_dataset`) have already refused empty or
    whitespace-only captions, or skipped them with the reason.
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
        with PixelWriter(tmp / PIXELS_FILE, size) as writer:
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
        write_tables(tmp, meta, frames, frame_emb, caps, cap_tokens, cap_emb, pseudo, videos)
        if twins_csv is not None and Path(twins_csv).exists():
            shutil.copyfile(twins_csv, tmp / "twins.csv")
        write_manifest(tmp)
    return meta


def _embed_and_write_pixels(
    backbone: Any, frames_dir: str | Path, writer: PixelWriter, batch_size: int, total: int
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
