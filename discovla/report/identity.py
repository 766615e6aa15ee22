"""The run's identity: the params that differ from the defaults and the git commit of the code."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from discovla.config import Params

UNKNOWN = "unknown"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"section.key": value}`` (in the mappings' own order)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def params_diff(params: Params) -> list[tuple[str, Any, Any]]:
    """``(dotted key, value, default)`` of every param whose value differs from ``Params()``'s default,
    in the order of ``discovla.config``."""
    default = flatten(Params().model_dump())
    current = flatten(params.model_dump())
    keys = list(dict.fromkeys([*default, *current]))
    return [(k, current.get(k), default.get(k)) for k in keys if current.get(k) != default.get(k)]


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def git_state(repo: str | Path) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the git work tree at ``repo`` (dirty: tracked files differ
    from the commit); ``{"commit": "unknown", "dirty": None}`` outside a git repository or without git."""
    try:
        commit = _git(Path(repo), "rev-parse", "HEAD")
        dirty = bool(_git(Path(repo), "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": UNKNOWN, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def describe_commit(state: dict[str, Any]) -> str:
    """``<sha>``, ``<sha> (dirty: uncommitted changes)`` or ``unknown (not a git repository)``."""
    if state["commit"] == UNKNOWN:
        return f"{UNKNOWN} (not a git repository)"
    return state["commit"] + (" (dirty: uncommitted changes)" if state["dirty"] else "")
