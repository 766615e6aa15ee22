"""The run's identity: the params that differ from the defaults and the git commit of the code.

"Dirty" means what a reader of the page needs to know: the code or params that produced it differ from
the commit. The files the pipeline itself writes (every ``outs``, ``metrics`` and ``plots`` path of
``dvc.yaml``, and ``dvc.lock``) are left out of that check: ``dvc repro`` has just rewritten them when the
report runs, so counting them would mark nearly every page dirty and make its bytes depend on git's
state rather than on the inputs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

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


def pipeline_outputs(repo: str | Path) -> list[str]:
    """Paths the DVC pipeline at ``repo`` writes: every stage's outs, metrics and plots, and ``dvc.lock``
    (just ``dvc.lock`` when there is no readable ``dvc.yaml``)."""
    paths = {"dvc.lock"}
    try:
        stages = (yaml.safe_load((Path(repo) / "dvc.yaml").read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        return sorted(paths)
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            for out in stage.get(key) or []:
                paths.add(str(next(iter(out)) if isinstance(out, dict) else out))
    return sorted(paths)


def git_state(repo: str | Path) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the git work tree at ``repo`` (dirty: tracked files other than
    the pipeline's own outputs, :func:`pipeline_outputs`, differ from the commit); ``{"commit": "unknown",
    "dirty": None}`` outside a git repository or without git."""
    exclude = [f":(exclude){p}" for p in pipeline_outputs(repo)]
    try:
        commit = _git(Path(repo), "rev-parse", "HEAD")
        status = _git(Path(repo), "status", "--porcelain", "--untracked-files=no", "--", ".", *exclude)
    except (OSError, subprocess.SubprocessError):
        return {"commit": UNKNOWN, "dirty": None}
    return {"commit": commit, "dirty": bool(status)}


def describe_commit(state: dict[str, Any]) -> str:
    """``<sha>``, ``<sha> (dirty: uncommitted changes to code or params)`` or ``unknown (not a git
    repository)``."""
    if state["commit"] == UNKNOWN:
        return f"{UNKNOWN} (not a git repository)"
    return state["commit"] + (" (dirty: uncommitted changes to code or params)" if state["dirty"] else "")
