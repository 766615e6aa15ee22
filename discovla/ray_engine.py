"""The ``ray`` engine of the per-video stages: runs a stage's own code over its resumable parts as a Ray
Data pipeline (:func:`run_parts`).

Each stage cuts its work into parts (the frames stage: batches of videos; captions: ranges of frame rows
cut into the local engine's batches; index: batches of feature-cache videos) and gives a function (a CPU
task per part: frame sampling) or a class (an actor pool, one model per actor, ``num_gpus`` each:
captioning, embedding) that computes one part and writes its part file atomically into a work directory
the stage names (on a cluster: a path every node sees). A killed run thus leaves only whole parts, and a
rerun computes just the missing ones; the stage then writes its artifact from the parts exactly as the
local engine does. Results travel as files or through Ray's object store; nothing is unpickled from disk.
The stage-specific code lives with each stage (:mod:`discovla.extraction`, :mod:`discovla.captioning`,
:mod:`discovla.split_indexing`); this module imports none of it, nor any model.

:func:`ray_session` starts a local Ray (``engine.num_cpus``) unless ``engine.address`` or ``$RAY_ADDRESS``
names a cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from discovla.engines import EngineError, EngineParams
from discovla.errors import DiscoVLAError


@contextlib.contextmanager
def ray_session(engine: EngineParams) -> Iterator[Any]:
    """The ``ray`` module with Ray running: an already initialised Ray as it is, else a cluster at
    ``engine.address`` / ``$RAY_ADDRESS`` (this package shipped to its workers), else a local Ray of
    ``engine.num_cpus`` CPUs (0: all), shut down on exit."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise EngineError(
            "engine: Ray is not installed (pip install -e '.[ray]', or set the stage back to local)"
        ) from None
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the stage's own tqdm bar counts videos / frames
    ctx.print_on_execution_start = False
    if ray.is_initialized():
        _quiet()
        yield ray
        return
    address = engine.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        package = str(Path(__file__).resolve().parent)
        try:
            ray.init(address=address, runtime_env={"py_modules": [package]}, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EngineError(f"engine: cannot reach the Ray cluster at {address!r}: {reason}") from None
    else:
        ray.init(num_cpus=engine.num_cpus or None, include_dashboard=False, log_to_driver=False)
    _quiet()
    try:
        yield ray
    finally:
        ray.shutdown()


def _quiet() -> None:
    """Ray Data's INFO/WARNING lines (execution plans, 'progress bars disabled') off the stage's output."""
    for name in ("ray.data", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _known_error(exc: BaseException) -> DiscoVLAError | None:
    """The project's own error inside a Ray task error (their one-line messages reach the stage)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(cause, DiscoVLAError):
            return cause
        if isinstance(e, DiscoVLAError) and type(e).__module__.startswith("discovla"):
            return e
        todo += [e.__cause__, e.__context__, cause if isinstance(cause, BaseException) else None]
    return None


def run_parts(
    parts: list[dict[str, Any]],
    compute: Callable[..., dict[str, Any]] | type,
    *,
    engine: EngineParams,
    on_done: Callable[[dict[str, Any]], None],
    kwargs: dict[str, Any] | None = None,
) -> None:
    """Compute every part of ``parts`` (rows of plain values) on Ray, calling ``on_done`` with each
    finished part's result row (progress), in the driver, as parts finish.

    ``compute`` a function: ``compute(part, **kwargs)`` as one CPU task per part. A class: an actor pool of
    ``engine.actors`` instances ``compute(**kwargs)`` (1 CPU, ``engine.num_gpus`` GPUs each), called with a
    batch of one part (a dict of one-element arrays) and returning a dict of one-element lists. The
    project's own errors raised in a task come out here as themselves (one-line messages)."""
    if not parts:
        return
    with ray_session(engine) as ray:
        ds = ray.data.from_items(parts, override_num_blocks=len(parts))
        if isinstance(compute, type):
            ds = ds.map_batches(
                compute,
                fn_constructor_kwargs=kwargs or {},
                batch_size=1,
                concurrency=engine.actors,
                num_cpus=1,
                num_gpus=engine.num_gpus or None,
            )
        else:
            ds = ds.map(compute, fn_kwargs=kwargs or {}, num_cpus=1)
        try:
            for row in ds.iter_rows():
                on_done(row)
        except Exception as exc:
            known = _known_error(exc)
            if known is not None:
                raise known from None
            raise


def on_a_cluster(engine: EngineParams) -> bool:
    """Whether :func:`ray_session` would join a running Ray (``engine.address``, ``$RAY_ADDRESS``, or Ray
    already initialised in this process) rather than start a local one: work that one machine's threads do
    as well (writing the frames store's shards) goes to Ray only then."""
    if engine.address or os.environ.get("RAY_ADDRESS"):
        return True
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def actor_device(engine: EngineParams) -> str:
    """The device an actor's model runs on: ``cuda`` when the engine gives actors GPUs, else ``cpu``."""
    return "cuda" if engine.num_gpus > 0 else "cpu"
