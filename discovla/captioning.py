"""Pseudo captions for a frames store (the ``captions`` stage).

:func:`make_captions` captions every frame of a frames store with one of: a BLIP captioner
(:mod:`discovla.captioner`); ``oracle``, the shapes world's ground-truth still caption of the nearest source
frame (an upper bound); or a ``.json`` file of published pseudo captions. On the shapes world it also
scores the captions against the generator's ground truth.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from discovla.artifacts.captions import check_one_caption_per_frame, import_pseudo_captions
from discovla.artifacts.frames import KEYS, count_frames, iter_frame_batches, read_frames_index
from discovla.captioner import ORACLE, Captioner, load_captioner
from discovla.data.shapes import caption_agreement, match_frame_truth
from discovla.text import CaptionsError, normalize_caption


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
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Caption every frame row of ``frames_dir``; returns the captions and the stage metrics.

    ``model``: hub id or local directory (BLIP), ``oracle`` (shapes world: the ground-truth still caption of
    the nearest source frame), or a ``.json`` file of published pseudo captions
    (:func:`import_pseudo_captions`). ``root``: the dataset's directory; on the shapes world the metrics
    include agreement with ``<root>/frame_truth.parquet``.
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
