"""Building video indexes (:mod:`discovla.artifacts.index`) with a :class:`discovla.retriever.Retriever`.

- :func:`index_folder` (``discovla index``): every video file under a folder, sampled like the pipeline.
  A video that cannot be sampled is skipped with its :class:`discovla.sampling.VideoError` reason and
  listed in ``skipped.csv``. Re-running on the same ``out`` embeds only files that are new or changed: a
  file is matched by its absolute path, size and modification time (also for skipped files, which are not
  retried until they change, unless the reason was transient: a time-out); every result is reused only
  when the index was made by the same model. The
  index is also saved every ``save_every`` seconds, so an interrupted run resumes where it stopped.
  ``ann`` (``discovla index --ann ivf``) adds an approximate FAISS index (:mod:`discovla.ann`) at the end;
  a re-run keeps the parameters it was asked for unless told otherwise (those left to choose, nlist and
  nprobe, are chosen again for the index's new size; the trained IVF cells are reused while the chosen
  parameters stay the same). A mid-run save records the approximate index still to build
  (``ann_pending`` in its meta), so a re-run after a kill builds it too.

Indexing one split of the feature cache (the ``index`` stage, ``discovla search``) is
:mod:`discovla.split_indexing`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from discovla.ann import AnnError, AnnIndex, AnnParams, build_ann
from discovla.artifacts.index import (
    META,
    SKIPPED,
    VideoIndex,
    VideoIndexError,
    describe_model,
    read_index,
    same_model,
    skipped_frame,
    write_index,
)
from discovla.batching import batches
from discovla.data.folder import VIDEO_EXTS
from discovla.retriever import Retriever
from discovla.sampling import VideoError

SAVE_EVERY_S = 300.0
# skip reasons (discovla.sampling) that say nothing about the file itself: tried again on the next run
TRANSIENT_REASONS = frozenset({"ffmpeg timed out"})


# ------------------------------------------------------------------------------------------ folders


def find_videos(folder: str | Path) -> list[Path]:
    """Video files (by extension, any case) under ``folder``, recursively, hidden files and directories
    excluded; absolute paths, sorted by their path relative to ``folder``."""
    root = Path(folder).resolve()
    found = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() in VIDEO_EXTS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def folder_video_ids(files: list[Path], folder: str | Path) -> list[str]:
    """Video ids of ``files`` under ``folder``: the relative path without extension (``clips/cat``), or
    with it where two files would otherwise share an id (``cat.mp4`` and ``cat.mkv``)."""
    root = Path(folder).resolve()
    rel = [p.relative_to(root) for p in files]
    stems = [r.with_suffix("").as_posix() for r in rel]
    counts = pd.Series(stems).value_counts()
    return [s if counts[s] == 1 else r.as_posix() for s, r in zip(stems, rel, strict=True)]


@dataclass
class FolderReport:
    """What :func:`index_folder` did: the index written, how many videos it embedded now, reused from the
    previous index, dropped (files gone), and the videos skipped (``new_skipped``: tried in this run)."""

    index: VideoIndex
    embedded: int
    reused: int
    removed: int
    skipped: pd.DataFrame
    new_skipped: int
    rebuilt: str  # why the previous index at ``out`` was not reused ('' when it was, or there was none)


def _check_out(out: Path, folder: Path) -> None:
    """Refuse an ``out`` that would overwrite something that is not an index (it is replaced as a whole)."""
    if out.resolve() == folder.resolve() or folder.resolve().is_relative_to(out.resolve()):
        raise VideoIndexError(
            f"--out {out} would replace the video folder {folder}: choose another directory"
        )
    if out.exists() and not (out / META).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise VideoIndexError(f"--out {out} exists and is not a video index: choose a new or empty directory")


ANN_PENDING = "ann_pending"  # meta of a snapshot saved mid-run: the approximate index still to be built


@dataclass
class _Previous:
    """What an earlier index at ``out`` leaves to a re-run (empty when there is none, or another model's)."""

    rows: dict[str, tuple[int, int, torch.Tensor]]  # path -> (size, mtime_ns, embedding)
    skipped: dict[str, tuple[int, int, str]]  # path -> (size, mtime_ns, reason)
    rebuilt: str = ""  # why nothing is reused ('' when it is)
    ann: AnnIndex | None = None  # its approximate index (None: none, or a broken one)
    # the approximate index it was asked for: the built one's request, or a snapshot's pending one
    wanted: AnnParams | None = None


def _previous(out: Path, retriever: Retriever) -> _Previous:
    """The earlier index at ``out``: its rows and skipped files when made by the same model, and the
    approximate index it has or was to get (kept even when its rows are not: the user asked for it)."""
    if not (out / META).is_file():
        return _Previous({}, {})
    try:
        old = read_index(out)
    except AnnError:
        old = read_index(out, ann=False)
    wanted = old.ann.requested if old.ann is not None else None
    if wanted is None and isinstance(old.meta.get(ANN_PENDING), dict):
        try:
            wanted = AnnParams(**old.meta[ANN_PENDING])
        except (TypeError, AnnError):
            wanted = None
    meta = retriever.index_meta()
    if not same_model(old.meta, retriever.identity):
        why = f"it was computed with {describe_model(old.meta.get('model') or {})}"
        return _Previous({}, {}, why, wanted=wanted)
    if any(old.meta.get(k) != meta[k] for k in ("num_frames", "image_size")):
        return _Previous({}, {}, "it was sampled with other frames or size", wanted=wanted)
    rows = {
        p: (int(s), int(m), old.embeddings[i])
        for i, (p, s, m) in enumerate(zip(old.paths, old.sizes, old.mtimes, strict=True))
    }
    skipped = {
        str(r.path): (int(r.size), int(r.mtime_ns), str(r.reason))
        for r in old.skipped.itertuples(index=False)
    }
    return _Previous(rows, skipped, "", old.ann, wanted)


def _sample_all(
    retriever: Retriever, paths: list[str], workers: int
) -> Iterator[tuple[str, np.ndarray | None, str]]:
    """``(path, frames, '')`` or ``(path, None, reason)`` per path, in order; ``workers`` ffmpeg at a time."""

    def one(path: str) -> tuple[str, np.ndarray | None, str]:
        try:
            return path, retriever.sample(path), ""
        except VideoError as exc:
            return path, None, exc.reason

    if workers <= 1:
        yield from map(one, paths)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(one, paths)


def index_folder(
    retriever: Retriever,
    folder: str | Path,
    out: str | Path,
    *,
    batch_size: int = 16,
    workers: int = 1,
    progress: bool = True,
    save_every: float = SAVE_EVERY_S,
    log: Callable[[str], Any] | None = None,
    ann: AnnParams | str | None = None,
) -> FolderReport:
    """Embed every video under ``folder`` into the index ``out`` (updating it: see the module doc).

    ``batch_size`` videos per forward pass, ``workers`` videos decoded in parallel. ``log`` receives the
    one-line notes (e.g. why an earlier index is not reused). ``ann``: an approximate index to build
    (:class:`discovla.ann.AnnParams`), ``"exact"`` for none, ``None`` for what the previous index had."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise VideoIndexError(f"{folder}: not a directory of videos")
    _check_out(out, folder)
    files = find_videos(folder)
    if not files:
        raise VideoIndexError(f"no video files ({', '.join(VIDEO_EXTS)}) under {folder}")
    ids = dict(zip(map(str, files), folder_video_ids(files, folder), strict=True))
    stats = {str(f): (f.stat().st_size, f.stat().st_mtime_ns) for f in files}
    prev = _previous(out, retriever)
    previous, prev_skipped, rebuilt, prev_ann = prev.rows, prev.skipped, prev.rebuilt, prev.ann
    if isinstance(ann, str):
        ann = None if ann == "exact" else AnnParams(kind=ann)
    elif ann is None:
        # as asked for the first time: what was left to choose (nlist, nprobe) is chosen again for the
        # index's new size, and an interrupted run's pending approximate index is built
        ann = prev.wanted
    if rebuilt and log is not None:
        log(f"{out}: {rebuilt}: embedding every video again")

    done: dict[str, torch.Tensor] = {
        p: previous[p][2] for p in stats if p in previous and previous[p][:2] == stats[p]
    }
    reused = len(done)
    skipped: dict[str, str] = {
        p: prev_skipped[p][2]
        for p in stats
        if p not in done
        and p in prev_skipped
        and prev_skipped[p][:2] == stats[p]
        and prev_skipped[p][2] not in TRANSIENT_REASONS
    }
    todo = [p for p in stats if p not in done and p not in skipped]
    removed = sum(1 for p in previous if p not in stats)
    meta = {**retriever.index_meta(), "source": {"kind": "folder", "folder": str(folder.resolve())}}

    def snapshot(pending: bool = False) -> VideoIndex:
        """The index so far; ``pending``: a mid-run save, which records the approximate index to build."""
        rows = [p for p in stats if p in done]
        emb = torch.stack([done[p] for p in rows]) if rows else torch.empty(0, retriever.embed_dim)
        skip = skipped_frame(
            [
                {"path": p, "size": stats[p][0], "mtime_ns": stats[p][1], "reason": skipped[p]}
                for p in stats
                if p in skipped
            ]
        )
        pend = {ANN_PENDING: asdict(ann)} if pending and ann is not None else {}
        return VideoIndex(
            video_ids=[ids[p] for p in rows],
            paths=rows,
            embeddings=emb,
            meta={**meta, **pend},
            sizes=np.array([stats[p][0] for p in rows], np.int64),
            mtimes=np.array([stats[p][1] for p in rows], np.int64),
            skipped=skip,
        )

    new_skipped = 0
    last_save = time.monotonic()
    bar = tqdm(total=len(todo), desc="embedding videos", unit="video", disable=not progress or not todo)
    with bar:
        for sl in batches(len(todo), max(1, batch_size)):
            good: list[tuple[str, np.ndarray]] = []
            for path, frames, reason in _sample_all(retriever, todo[sl], workers):
                if frames is None:
                    skipped[path] = reason
                    new_skipped += 1
                else:
                    good.append((path, frames))
            if good:
                pixels = torch.stack([retriever.check_frames(f) for _, f in good])
                for (path, _), e in zip(good, retriever.embed_pixels(pixels), strict=True):
                    done[path] = e
            bar.update(sl.stop - sl.start)
            if save_every and time.monotonic() - last_save > save_every and sl.stop < len(todo):
                write_index(out, snapshot(pending=True))
                last_save = time.monotonic()
    index = snapshot()
    if ann is not None and len(index):
        index.ann = build_ann(index.embeddings, ann, index.meta["model"], prev_ann)
    write_index(out, index)
    return FolderReport(
        index=index,
        embedded=len(done) - reused,
        reused=reused,
        removed=removed,
        skipped=index.skipped,
        new_skipped=new_skipped,
        rebuilt=rebuilt,
    )


def summarise_skipped(skipped: pd.DataFrame, out: str | Path, show: int = 5) -> list[str]:
    """Lines for stdout: how many videos were skipped, per reason, and the first few files."""
    if skipped.empty:
        return []
    lines = [f"skipped {len(skipped)} video(s) that could not be sampled (listed in {Path(out) / SKIPPED}):"]
    for reason, n in skipped.reason.value_counts().sort_index().items():
        lines.append(f"  {n} x {reason}")
    for r in skipped.head(show).itertuples(index=False):
        lines.append(f"  {r.path}: {r.reason}")
    if len(skipped) > show:
        lines.append(f"  ... and {len(skipped) - show} more")
    return lines
