"""Errors a user can fix, and how stage scripts and the CLI report them.

Every known error of the pipeline (bad params, a dataset that cannot be read, missing stage inputs, a
backbone or captioner that cannot be loaded, no ffmpeg, ...) derives from :class:`DiscoVLAError` as well
as from its usual built-in base (``ValueError``, ``RuntimeError``), so ``except ValueError`` keeps working.
Stage scripts end with ``run_stage(main)``, and ``discovla`` CLI commands are decorated with
:func:`exits_on_error`: such an error ends the process with one line ``error: <message>`` on stderr and
exit status 2, no traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

EXIT_STATUS = 2

F = TypeVar("F", bound=Callable[..., Any])


class DiscoVLAError(Exception):
    """Base class of the errors whose message says what is wrong and what to do (no traceback needed)."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (inner line breaks become ``; ``)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return "; ".join(lines) or exc.__class__.__name__


def exits_on_error(fn: F) -> F:
    """Wrap ``fn`` so that a :class:`DiscoVLAError` prints ``error: <message>`` and exits with status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DiscoVLAError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_STATUS) from None

    return wrapper  # type: ignore[return-value]


def run_stage(main: Callable[..., Any]) -> None:
    """Run a stage script's ``main`` as a command line (its parameters become typer options, so
    ``--help`` documents them); a known error ends it with one line on stderr and status 2."""
    import typer

    typer.run(exits_on_error(main))
