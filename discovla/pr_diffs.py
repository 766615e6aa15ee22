"""What DVC says changed between two revisions, for the pull-request comment (:mod:`discovla.pr_summary`).

Everything comes from DVC, nothing is parsed from text: params (``Repo.params.diff``), metrics
(``Repo.metrics.diff``, the ablation tables as targets), plots (``dvc plots diff --json``) and, when the
head is the working tree, freshness (``Repo.status``, the git state, the working tree's metrics against
those committed in ``HEAD``). See :mod:`discovla.pr_summary` for what each means in the comment.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from discovla.errors import DiscoVLAError
from discovla.io import read_json

RETRIEVAL = "metrics/retrieval.json"
TRAIN = "metrics/train.json"
ABLATIONS = ("metrics/ablation.json", "metrics/ablation_static.json")  # `discovla ablate` (--captions static)
HEADLINE = {  # metrics/retrieval.json key -> row name (MdR: lower is better)
    "t2v.R@1": "t2v R@1",
    "t2v.R@5": "t2v R@5",
    "t2v.MdR": "t2v MdR (lower is better)",
    "v2t.R@1": "v2t R@1",
    "v2t.R@5": "v2t R@5",
    "v2t.MdR": "v2t MdR (lower is better)",
    "twins.content": "content-twin acc",
    "twins.order": "order-twin acc",
}
WORKSPACE = "workspace"
NO_CHANGE = "No metric changed"


class PRSummaryError(DiscoVLAError, RuntimeError):
    """DVC could not compare the revisions (an unknown revision, not a DVC repository, ...)."""


@dataclass
class Diffs:
    """What DVC reports between ``base`` and ``head``: ``{file: {key: {"old", "new", "diff"?}}}`` for
    params, metrics and each ablation table (by file); the changed plots (:class:`PlotChange`)."""

    base: str
    head: str | None
    params: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    ablation: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    plots: list[PlotChange] = field(default_factory=list)

    @property
    def head_name(self) -> str:
        return self.head or WORKSPACE


@dataclass
class PlotChange:
    """One plot whose data differ: ``series[(revision, field)] = [(x, y), ...]``, the x axis' name."""

    name: str
    x: str
    series: dict[tuple[str, str], list[tuple[float, float]]]


# ---- reading DVC --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _repo(root: str | Path) -> Iterator[Any]:
    """DVC's ``Repo`` at ``root``, used with ``root`` as the working directory: DVC resolves default
    targets (``dvc.yaml``) against the working directory, as its commands do."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with contextlib.chdir(root):
        try:
            repo = Repo(".")
        except DvcException as exc:
            raise PRSummaryError(f"{root}: {exc}") from None
        with repo:
            yield repo


def _diff(call: Any, what: str, **kwargs: Any) -> dict[str, Any]:
    from dvc.exceptions import DvcException

    try:
        out = call(**kwargs)
    except DvcException as exc:
        raise PRSummaryError(f"dvc {what} diff: {exc}") from None
    return out.get("diff", {}) if out else {}


def plots_diff_json(root: str | Path, base: str, head: str | None) -> dict[str, Any]:
    """``dvc plots diff --json base [head]`` run in ``root`` (this interpreter's DVC), parsed."""
    cmd = [sys.executable, "-m", "dvc", "plots", "diff", "--json", base, *([head] if head else [])]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        msg = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise PRSummaryError(f"dvc plots diff: {msg[-1] if msg else f'exit status {done.returncode}'}")
    return json.loads(done.stdout or "{}")


def _named_plot_files(root: Path) -> set[str]:
    """Files drawn by dvc.yaml's top-level named plots: their own plot ids (a stage's ``plots:`` entry
    for the same file) would draw the same data again."""
    try:
        dvc = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return set()
    files: set[str] = set()
    for entry in dvc.get("plots") or []:
        if isinstance(entry, dict):
            for spec in entry.values():
                y = (spec or {}).get("y") if isinstance(spec, dict) else None
                if isinstance(y, dict):
                    files.update(y)
    return files


def _number(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def changed_plots(plots_json: dict[str, Any], skip: set[str] = frozenset()) -> list[PlotChange]:
    """The plots of a ``dvc plots diff --json`` answer whose data differ between its revisions (a plot
    only one revision has counts as changed); plot ids in ``skip`` are left out."""
    out = []
    for name, renders in sorted((plots_json.get("data") or {}).items()):
        if name in skip:
            continue
        for render in renders:
            content = render.get("content") or {}
            values = (content.get("data") or {}).get("values") or []
            x = ((content.get("encoding") or {}).get("x") or {}).get("field", "step")
            series: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for row in values:
                if "field" in row:  # a named plot: one row per (x, field) with its y value
                    fields = {row["field"]: row.get("dvc_inferred_y_value")}
                else:
                    fields = {k: v for k, v in row.items() if k not in (x, "rev", "step")}
                for f, y in fields.items():
                    series.setdefault((str(row.get("rev")), f), []).append((_number(row.get(x)), _number(y)))
            revs = render.get("revisions") or sorted({r for r, _ in series})
            by_rev = [{f: sorted(s) for (r, f), s in series.items() if r == rev} for rev in revs]
            if len(by_rev) < 2 or any(b != by_rev[0] for b in by_rev[1:]):
                out.append(PlotChange(name, x, series))
    return out


def collect(root: str | Path, base: str, head: str | None = None) -> Diffs:
    """Params, metrics (and the ablation table) and plots that differ between ``base`` and ``head``."""
    root = Path(root)
    diffs = Diffs(base=base, head=head)
    with _repo(root) as repo:
        diffs.params = _diff(repo.params.diff, "params", a_rev=base, b_rev=head or WORKSPACE)
        diffs.metrics = _diff(repo.metrics.diff, "metrics", a_rev=base, b_rev=head or WORKSPACE)
        targets = [a for a in ABLATIONS if a not in diffs.metrics]  # not declared as metrics in dvc.yaml
        if targets:  # a file absent from both revisions is only an error entry, left out
            diffs.ablation = _diff(
                repo.metrics.diff, "metrics", a_rev=base, b_rev=head or WORKSPACE, targets=targets
            )
        diffs.ablation.update({a: diffs.metrics.pop(a) for a in ABLATIONS if a in diffs.metrics})
        diffs.ablation = {a: d for a, d in diffs.ablation.items() if d}
    diffs.plots = changed_plots(plots_diff_json(root, base, head), skip=_named_plot_files(root))
    return diffs


def freshness(root: str | Path, head: str | None) -> str:
    """One line: whether the head's numbers are outputs of its code and params (see the module doc)."""
    from dvc.exceptions import DvcException

    from discovla.report.identity import git_state

    if head is not None:
        return (
            f"Freshness not checked: `{head}` is a commit, and `dvc status` needs it checked out "
            "(run `discovla pr-summary` in its checkout after `dvc repro`)."
        )
    root = Path(root)
    try:
        with _repo(root) as repo:
            status = repo.status()
            committed = _diff(repo.metrics.diff, "metrics", a_rev="HEAD", b_rev=WORKSPACE)
    except DvcException as exc:
        raise PRSummaryError(f"dvc status: {exc}") from None
    try:
        key = read_json(root / TRAIN).get("checkpoint_key")
    except (OSError, ValueError, AttributeError):
        key = None
    git = git_state(root)
    parts = []
    if status:
        stages = ", ".join(f"`{name}`" for name in sorted(status))
        parts.append(
            f"**Not a fresh run**: `dvc status` lists {stages} as changed since their last run (dvc.lock), "
            "so some numbers are not outputs of this code and params: run `dvc repro`."
        )
    else:
        held = f" (train checkpoint key `{key}`)" if key else ""
        parts.append(
            "**Fresh run**: `dvc status` is clean: every stage's code, params, data and outputs match "
            f"dvc.lock in this checkout, so the numbers are outputs of this code and params{held}."
        )
    if git["dirty"]:
        parts.append("The checkout has uncommitted changes to code or params.")
    if git["commit"] != "unknown":
        changed = sum(len(v) for v in committed.values())
        parts.append(
            f"Its metrics equal those committed in `{git['commit'][:12]}`."
            if not changed
            else f"Its metrics differ from those committed in `{git['commit'][:12]}` in {changed} values "
            "(`dvc metrics diff HEAD`)."
        )
    return " ".join(parts)
