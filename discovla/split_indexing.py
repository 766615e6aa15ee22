"""Video indexes of one split of the feature cache (:mod:`discovla.artifacts.index`), from its stored
pixels (no decoding), with the video paths of the dataset when they are known.

- :func:`build_split_index` (the ``index`` stage) and :func:`ensure_split_index` (``discovla search``
  without ``--index``). With ``engine.index == "ray"`` the split is embedded by an actor pool of
  retrievers on Ray (:func:`embed_split_ray`), in the local engine's batches, each part of the split kept
  under a work directory until the index is written.

Indexing a folder of video files (``discovla index``) is :mod:`discovla.indexing`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from discovla.artifacts.features import Features, cache_digest, load_features
from discovla.artifacts.index import (
    META,
    VideoIndex,
    VideoIndexError,
    describe_model,
    read_index,
    same_model,
    write_index,
)
from discovla.batching import batches
from discovla.engines import EngineParams
from discovla.errors import DiscoVLAError
from discovla.io import atomic_path, read_json, write_json
from discovla.retriever import Retriever, adapters_config, adapters_identity, resolve_pretrained


def dataset_video_paths(dataset: str, root: str | Path) -> dict[str, str]:
    """``video_id -> path`` of the dataset's video files that exist ({} when the dataset cannot be read)."""
    from discovla.data.registry import load_dataset

    try:
        videos = load_dataset(dataset, root).videos
    except (DiscoVLAError, OSError):
        return {}
    return {str(v): str(p) for v, p in zip(videos.video_id, videos.path, strict=True) if Path(p).is_file()}


def _embed_batch(retriever: Retriever, features: Features, vids: np.ndarray) -> torch.Tensor:
    """One forward pass: the embeddings of feature-cache rows ``vids``."""
    return retriever.embed_pixels(torch.stack([retriever.check_frames(v) for v in features.pixels[vids]]))


MODEL_META = "model.json"  # in a parts directory: the index meta of the model the actors loaded


class _EmbedParts:
    """Ray actor (the ``ray`` engine): one retriever and the feature cache; embeds a part's videos in the
    local engine's batches and writes them as ``.npy`` (float32 ``[N, D]``). It also writes its model's
    index meta (:meth:`Retriever.index_meta`) as ``model.json`` next to the parts, so the driver never
    loads the model."""

    def __init__(
        self, adapters_dir: str, zeroshot: bool, device: str, features_dir: str, parts_dir: str
    ) -> None:
        self.retriever = Retriever.load(adapters_dir, device=device, zeroshot=zeroshot)
        self.features = load_features(features_dir)
        self.meta = Path(parts_dir) / MODEL_META

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[int]]:
        (vids,), (per_batch,), (out,) = (batch[k] for k in ("vids", "per_batch", "part"))
        vids = np.asarray(vids, np.int64)
        emb = [
            _embed_batch(self.retriever, self.features, vids[sl]) for sl in batches(len(vids), int(per_batch))
        ]
        if not self.meta.is_file():  # before the part: a part on disk means model.json is there too
            write_json(self.meta, self.retriever.index_meta())
        with atomic_path(str(out)) as tmp, open(tmp, "wb") as f:
            np.save(f, torch.cat(emb).cpu().numpy(), allow_pickle=False)
        return {"videos": [len(vids)]}


STALE_PARTS_S = 3600.0


def _remove_stale_parts(keep: Path, older_than: float = STALE_PARTS_S) -> None:
    """Remove the part folders next to ``keep`` that a killed run with other inputs left behind (untouched
    for ``older_than`` seconds, so a concurrent run's are spared), and say what was freed."""
    now, freed, n = time.time(), 0, 0
    for d in keep.parent.glob("*") if keep.parent.is_dir() else []:
        if d == keep or not d.is_dir() or len(d.name) != 16:
            continue
        files = [f for f in d.iterdir() if f.is_file()]
        if any(now - f.stat().st_mtime < older_than for f in files) or now - d.stat().st_mtime < older_than:
            continue
        freed += sum(f.stat().st_size for f in files)
        shutil.rmtree(d, ignore_errors=True)
        n += 1
    if n:
        print(
            f"index (ray): removed {n} stale part folder(s) of earlier runs under {keep.parent} "
            f"({freed / 2**20:.1f} MiB)"
        )


def embed_split_ray(
    features_dir: str | Path,
    adapters_dir: str | Path,
    vids: np.ndarray,
    per_batch: int,
    *,
    zeroshot: bool,
    engine: EngineParams,
    work_dir: str | Path,
    progress: bool = True,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The embeddings of feature-cache rows ``vids`` on Ray, and the index meta of the model the actors
    loaded: parts of whole batches of ``per_batch`` videos (about ``engine.part_frames`` frames) on an actor
    pool of ``engine.actors`` retrievers, each part kept as ``work_dir/<key>/part-XXXXX.npy`` (key: hash of
    the cache, the adapters' files, the rows and the batching) so that a rerun after a kill embeds only the
    missing parts; removed after success. The driver loads no model (only when every part was already
    there and its ``model.json`` was not)."""
    from discovla.ray_engine import actor_device, run_parts

    features = load_features(features_dir)
    stamps = [
        [str(f), f.stat().st_size, f.stat().st_mtime_ns]
        for f in sorted(Path(adapters_dir).rglob("*"))
        if f.is_file()
    ]
    per_part = per_batch * max(1, engine.part_frames // (per_batch * features.num_frames))
    device = actor_device(engine)  # in the key: a CPU part and a GPU part differ in the last bits
    blob = [
        2,
        features.fingerprint(),
        stamps,
        zeroshot,
        device,
        per_batch,
        per_part,
        np.asarray(vids).tolist(),
    ]
    parts_dir = Path(work_dir).resolve() / hashlib.sha256(json.dumps(blob).encode()).hexdigest()[:16]
    _remove_stale_parts(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    plan = [
        {"part": str(parts_dir / f"part-{i:05d}.npy"), "vids": vids[sl].tolist(), "per_batch": per_batch}
        for i, sl in enumerate(batches(len(vids), per_part))
    ]
    todo = [p for p in plan if not Path(p["part"]).exists()]
    kwargs = {  # absolute paths for the workers (their working directory is not ours)
        "adapters_dir": str(Path(adapters_dir).resolve()),
        "zeroshot": zeroshot,
        "device": device,
        "features_dir": str(Path(features_dir).resolve()),
        "parts_dir": str(parts_dir),
    }
    resumed = len(vids) - sum(len(p["vids"]) for p in todo)
    with tqdm(
        total=len(vids), initial=resumed, desc="index (ray)", unit="video", disable=not progress
    ) as bar:
        run_parts(
            todo, _EmbedParts, engine=engine, on_done=lambda r: bar.update(int(r["videos"])), kwargs=kwargs
        )
    emb = torch.cat([torch.from_numpy(np.load(p["part"], allow_pickle=False)) for p in plan])
    if (parts_dir / MODEL_META).is_file():
        meta = read_json(parts_dir / MODEL_META)
    else:  # every part from an earlier run that predates model.json
        meta = Retriever.load(adapters_dir, device="cpu", zeroshot=zeroshot).index_meta()
    shutil.rmtree(parts_dir)
    try:
        Path(work_dir).rmdir()  # only if no other (stale) work is left in it
    except OSError:
        pass
    return emb, meta


def _check_split(features: Features, backbone: str, num_frames: int, zeroshot: bool) -> None:
    """The feature cache was made for the model's backbone, with its frame count (unless zero-shot)."""
    meta = features.meta
    if meta.get("backbone") not in (None, backbone):
        raise VideoIndexError(
            f"the feature cache was made for backbone {meta['backbone']!r}, the adapters use "
            f"{backbone!r}: rerun the features stage or pass the matching --adapters"
        )
    frames = int(features.pixels.shape[1])
    if not zeroshot and frames != num_frames:
        raise VideoIndexError(
            f"the feature cache {features.path or ''} has {frames} frames per video, the adapters were "
            f"trained on {num_frames}: rebuild it with frames.num_frames: {num_frames} "
            f"(dvc repro) or pass the adapters trained on it (--adapters)"
        )


def _split_index(
    model_meta: dict[str, Any],
    features: Features,
    split: str,
    vids: np.ndarray,
    emb: torch.Tensor,
    paths: dict[str, str] | None,
    source: dict[str, Any] | None,
) -> VideoIndex:
    ids = [features.video_ids[i] for i in vids]
    paths = paths or {}
    src = {"kind": "split", "split": split, "features_digest": features.fingerprint(), **(source or {})}
    return VideoIndex(
        video_ids=ids,
        paths=[paths.get(v, "") for v in ids],
        embeddings=emb,
        meta={**model_meta, "source": src},
    )


def _split_videos(features: Features, split: str) -> np.ndarray:
    vids = features.split_videos(split)
    if len(vids) == 0:
        raise VideoIndexError(f"the feature cache has no {split!r} videos")
    return vids


def split_index(
    retriever: Retriever,
    features: Features,
    split: str,
    paths: dict[str, str] | None = None,
    batch_size: int = 256,
    source: dict[str, Any] | None = None,
) -> VideoIndex:
    """The videos of ``split`` embedded from the feature cache's pixels (as the evaluate stage does), here
    with ``retriever``, ``batch_size`` frames per forward pass."""
    vids = _split_videos(features, split)
    _check_split(features, retriever.backbone.name, retriever.num_frames, retriever.zeroshot)
    per_batch = max(1, batch_size // int(features.pixels.shape[1]))
    emb = torch.cat([_embed_batch(retriever, features, vids[sl]) for sl in batches(len(vids), per_batch)])
    return _split_index(retriever.index_meta(), features, split, vids, emb, paths, source)


def build_split_index(
    features_dir: str | Path,
    adapters_dir: str | Path,
    split: str,
    out: str | Path,
    *,
    paths: dict[str, str] | None = None,
    zeroshot: bool = False,
    device: str = "auto",
    batch_size: int = 256,
    retriever: Retriever | None = None,
    engine: EngineParams | None = None,
    work_dir: str | Path | None = None,
) -> VideoIndex:
    """Index the ``split`` videos of the feature cache ``features_dir`` with the model of ``adapters_dir``
    (or ``retriever``, already loaded) into ``out``; ``paths``: ``video_id -> file`` shown by search.
    ``engine.index == "ray"``: embedded on Ray (:func:`embed_split_ray`, parts under ``work_dir``; the
    model is loaded by the actors only, its config checked here first, so ``retriever`` and ``device`` are
    not used: the actors' device is ``engine``'s)."""
    features = load_features(features_dir)
    source = {"features": str(features_dir)}
    if engine is not None and engine.index == "ray":
        if work_dir is None or not adapters_dir:
            raise VideoIndexError("the ray index engine needs the adapters directory and a work directory")
        adapters_identity(adapters_dir, zeroshot)  # the adapter files are there: one line before Ray starts
        cfg = adapters_config(adapters_dir)
        vids = _split_videos(features, split)
        _check_split(features, cfg["backbone"], cfg["model"].get("num_frames", 8), zeroshot)
        per_batch = max(1, batch_size // int(features.pixels.shape[1]))
        emb, meta = embed_split_ray(
            features_dir, adapters_dir, vids, per_batch, zeroshot=zeroshot, engine=engine, work_dir=work_dir
        )
        # the actors saw absolute paths: the index records them as given here, as the local engine does
        meta["model"] = {**meta["model"], **adapters_identity(adapters_dir, zeroshot)}
        meta["pretrained"] = resolve_pretrained(cfg.get("pretrained"), Path(adapters_dir))
        index = _split_index(meta, features, split, vids, emb, paths, source)
    else:
        retriever = retriever or Retriever.load(adapters_dir, device=device, zeroshot=zeroshot)
        index = split_index(retriever, features, split, paths, batch_size, source)
    write_index(out, index)
    return index


def ensure_split_index(
    retriever: Retriever,
    features_dir: str | Path,
    out: str | Path,
    split: str = "test",
    paths: dict[str, str] | Callable[[], dict[str, str]] | None = None,
) -> tuple[VideoIndex, str]:
    """The split index at ``out`` if it was made by ``retriever``'s model from the current feature cache,
    else built (once) and written there. Second: why it was built ('' when reused). ``paths`` (or a
    function giving them, called only when building): ``video_id -> file``."""
    out = Path(out)
    why = f"{out} does not exist yet"
    if (out / META).is_file():
        old = read_index(out)
        src = old.meta.get("source") or {}
        if not same_model(old.meta, retriever.identity):
            why = f"{out} was computed with {describe_model(old.meta.get('model') or {})}"
        elif src.get("kind") != "split" or src.get("split") != split:
            why = f"{out} is not an index of the {split} split"
        elif not Path(features_dir).is_dir():
            return old, ""  # nothing to compare with: the index is all there is
        elif src.get("features_digest") == cache_digest(features_dir):
            return old, ""
        else:
            why = f"the feature cache {features_dir} changed"
    paths = paths() if callable(paths) else paths
    index = build_split_index(features_dir, "", split, out, paths=paths, retriever=retriever)
    return index, why
