"""Where a video lives: a local path, or a URI that one of pyarrow's filesystems resolves.

A video's ``path`` (a dataset's ``videos`` table, a folder dataset's ``captions.csv``) may be a local path
or a URI such as ``s3://bucket/videos/v1.mp4``, ``gs://...``, ``hdfs://...`` or ``file:///...``: whatever
:meth:`pyarrow.fs.FileSystem.from_uri` accepts, with its options in the query string (for example
``?endpoint_override=host:9000&scheme=http`` for an S3-compatible store; credentials come from the
environment, as for any pyarrow or AWS tool). The frames stage reads such videos in place: PyAV decodes
from pyarrow's random-access file. Outputs (frames store, work directories) stay on local or shared POSIX
paths, because they are written by atomic rename.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat as stat_module
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


class LocationError(OSError):
    """A URI that no pyarrow filesystem resolves, or a store that cannot be reached; the message says
    which."""


def is_uri(path: str | Path) -> bool:
    """True for ``scheme://...`` (a pyarrow filesystem URI), False for a local path."""
    return isinstance(path, str) and bool(_SCHEME.match(path))


def _resolve(uri: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError, NotImplementedError) as exc:
        raise LocationError(f"{uri}: {str(exc).splitlines()[0]}") from None


def stat(path: str | Path) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of the file at ``path``, or None where there is none (a missing file, a
    directory). Raises :class:`LocationError` when a URI's store cannot be reached."""
    if not is_uri(path):
        try:
            st = os.stat(path)  # one metadata call per video: this runs for every video of a dataset
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns) if stat_module.S_ISREG(st.st_mode) else None
    import pyarrow.fs as pafs

    fs, inner = _resolve(str(path))
    try:
        info = fs.get_file_info(inner)
    except OSError as exc:
        raise LocationError(f"{path}: {str(exc).splitlines()[0]}") from None
    if info.type != pafs.FileType.File:
        return None
    return int(info.size or 0), int(info.mtime_ns or 0)


def stat_many(paths: Sequence[str | Path]) -> list[tuple[int, int] | None]:
    """:func:`stat` of every path, in order. URIs are listed a folder at a time (one LIST request per
    1,000 objects on S3, where one HEAD per video would take hours at 10M clips); a folder that cannot be
    listed is asked file by file. Raises :class:`LocationError` like :func:`stat`."""
    import pyarrow.fs as pafs

    out: list[tuple[int, int] | None] = [None] * len(paths)
    folders: dict[str, list[tuple[int, str]]] = {}
    for i, path in enumerate(paths):
        if not is_uri(path):
            out[i] = stat(path)
            continue
        base, sep, query = str(path).partition("?")
        folder, _, name = base.rpartition("/")
        folders.setdefault(folder + "/" + sep + query, []).append((i, name))
    for folder, items in folders.items():
        fs, inner = _resolve(folder)
        try:
            listed = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
        except OSError:  # e.g. listing not allowed: one request per file
            base, sep, query = folder.partition("?")
            for i, name in items:
                out[i] = stat(base + name + sep + query)
            continue
        files = {info.base_name: info for info in listed if info.type == pafs.FileType.File}
        for i, name in items:
            info = files.get(name)
            out[i] = (int(info.size or 0), int(info.mtime_ns or 0)) if info is not None else None
    return out


@contextlib.contextmanager
def open_video(path: str | Path) -> Iterator[Any]:
    """What ``av.open`` takes for ``path``: ``file:<absolute path>`` for a local file (so that a name with a
    colon is never taken for a protocol), or pyarrow's random-access file for a URI (closed on exit).
    Opening asks an object store for the size again (pyarrow's ``open_input_file`` takes a path only), so
    a sampled object costs two metadata requests, :func:`stat`'s and this one: small next to decoding."""
    if not is_uri(path):
        yield f"file:{Path(path).absolute()}"
        return
    fs, inner = _resolve(str(path))
    try:
        f = fs.open_input_file(inner)
    except OSError as exc:
        raise LocationError(f"{path}: {str(exc).splitlines()[0]}") from None
    try:
        yield f
    finally:
        f.close()
