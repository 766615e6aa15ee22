"""The pull-request view: one Markdown comment with what a change did to params, metrics and plots.

Everything comes from DVC, nothing is parsed from text:

- params: ``Repo.params.diff`` (what ``dvc params diff --json`` prints);
- metrics: ``Repo.metrics.diff`` over the metrics declared in ``dvc.yaml`` (``dvc metrics diff --json``), and
  over the ablation tables (``metrics/ablation.json``, and ``metrics/ablation_static.json`` when there is
  one) as targets (``dvc metrics diff --targets``);
- plots: ``dvc plots diff --json`` (the rendered Vega-Lite data of each plot, per revision); a plot whose
  data changed is drawn as a PNG next to the comment (base dashed, head solid), which CML's ``cml comment
  create`` uploads;
- freshness, when the head is the working tree: ``Repo.status`` (``dvc status``: clean means every stage's
  deps, params and outputs match ``dvc.lock``, so the numbers are outputs of this checkout's code and
  params, the train stage's checkpoint key included), the git state of code and params
  (:func:`discovla.report.identity.git_state`), and whether the working tree's metrics equal those
  committed in ``HEAD`` (so a CI run that reproduced the pipeline shows whether the committed numbers
  reproduce).

``base`` and ``head`` are git revisions; ``head=None`` is the working tree (DVC's ``workspace``).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
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


# ---- rendering ----------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    """A value in a table cell: numbers to 4 decimals (integers with thousands separators), the rest as
    code; ``–`` when absent."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{round(v, 4):g}"
    return f"`{v}`"


def _delta(entry: dict[str, Any]) -> str:
    d = entry.get("diff")
    if not isinstance(d, int | float) or isinstance(d, bool):
        return "–"
    return f"{round(d, 4):+g}"


def _table(head: list[str], rows: list[list[str]], right: int = 1) -> list[str]:
    align = ["---"] * (len(head) - right) + ["---:"] * right
    return [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(align) + " |",
        *["| " + " | ".join(r) + " |" for r in rows],
    ]


def _ablation_rows(ablation: dict[str, dict[str, Any]]) -> list[str]:
    """The ablation table's rows whose mean changed: ``base → head (delta)`` in the changed cells."""
    from discovla.artifacts.ablation import LABELS, TABLE_COLUMNS, label

    cells: dict[str, dict[str, str]] = {}
    for key, entry in ablation.items():
        found = re.fullmatch(r"summary\.(.+)\.([^.]+)\.mean", key)
        if found and found.group(2) in TABLE_COLUMNS:
            variant, col = found.groups()
            delta = _delta(entry)
            cell = f"{_fmt(entry.get('old'))} → {_fmt(entry.get('new'))}"
            cells.setdefault(variant, {})[col] = cell if delta == "–" else f"{cell} ({delta})"
    if not cells:
        return []
    cols = [c for c in TABLE_COLUMNS if any(c in row for row in cells.values())]
    order = list(LABELS)  # the table's own row order; beta=X rows after, by name
    ranked = sorted(cells, key=lambda v: (order.index(v) if v in order else len(order), v))
    rows = [[label(v), *(cells[v].get(c, "") for c in cols)] for v in ranked]
    return _table(["Variant", *(TABLE_COLUMNS[c] for c in cols)], rows, right=0)


def draw_plot(plot: PlotChange, base: str, path: Path) -> Path:
    """A PNG of one changed plot: each field a colour, the base revision dashed, the others solid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = sorted({f for _, f in plot.series})
    colours = {f: f"C{i % 10}" for i, f in enumerate(fields)}
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for (rev, f), points in sorted(plot.series.items()):
        xs, ys = zip(*sorted(points), strict=True)
        style = "--" if rev == base else "-"
        ax.plot(xs, ys, style, color=colours[f], label=f"{f} ({rev})", linewidth=1.2)
    ax.set_xlabel(plot.x)
    ax.set_title(plot.name)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def render(diffs: Diffs, fresh: str, images: dict[str, str] | None = None) -> str:
    """The comment's Markdown. ``images``: plot name -> image path or URL (else the plot is named only)."""
    title = f"`{diffs.head_name}` vs `{diffs.base}`"
    changed_metrics = any(diffs.metrics.values()) or any(diffs.ablation.values())
    if not (changed_metrics or any(diffs.params.values()) or diffs.plots):
        return f"**DiscoVLA** {title}: {NO_CHANGE} (nor any param or plot). {fresh}\n"
    lines = [f"## DiscoVLA: {title}", "", fresh, ""]
    lines += ["### Metrics", ""]
    if not changed_metrics:
        lines += [f"{NO_CHANGE}.", ""]
    retrieval = diffs.metrics.get(RETRIEVAL, {})
    head_rows = [
        [name, _fmt(retrieval[k].get("old")), _fmt(retrieval[k].get("new")), _delta(retrieval[k])]
        for k, name in HEADLINE.items()
        if k in retrieval
    ]
    if head_rows:
        lines += [f"Test split (`{RETRIEVAL}`):", ""]
        lines += _table(["metric", diffs.base, diffs.head_name, "Δ"], head_rows, right=3) + [""]
    elif changed_metrics:
        lines += ["Headline retrieval metrics (t2v/v2t R@1, R@5, MdR, twins) unchanged.", ""]
    for name in ABLATIONS:
        ablation = _ablation_rows(diffs.ablation.get(name, {}))
        if ablation:
            intro = (
                f"Ablation rows that changed (`{name}`, mean over seeds, {diffs.base} → {diffs.head_name}):"
            )
            lines += [intro, "", *ablation, ""]
    others = [
        [f"`{f}`", f"`{k}`", _fmt(e.get("old")), _fmt(e.get("new")), _delta(e)]
        for f, entries in sorted(diffs.metrics.items())
        for k, e in sorted(entries.items())
        if not (f == RETRIEVAL and k in HEADLINE)
    ]
    if others:
        lines += [f"<details><summary>Other metric changes ({len(others)})</summary>", ""]
        lines += _table(["file", "metric", diffs.base, diffs.head_name, "Δ"], others, right=3)
        lines += ["", "</details>", ""]
    params = [
        [f"`{k}`", _fmt(e.get("old")), _fmt(e.get("new"))]
        for f, entries in sorted(diffs.params.items())
        for k, e in sorted(entries.items())
    ]
    lines += ["### Params", ""]
    lines += (
        _table(["param", diffs.base, diffs.head_name], params, right=2) if params else ["No change."]
    ) + [""]
    lines += ["### Plots", ""]
    if not diffs.plots:
        lines += ["No plot changed.", ""]
    for plot in diffs.plots:
        where = (images or {}).get(plot.name)
        lines += [f"**{plot.name}** ({diffs.base} dashed, {diffs.head_name} solid)", ""]
        lines += [f"![{plot.name}]({where})" if where else f"`dvc plots diff {diffs.base}` shows it.", ""]
    lines += [
        "<sub>From DVC: `dvc params diff`, `dvc metrics diff` (and `--targets` the ablation tables), "
        "`dvc plots diff --json`, `dvc status`; written by `discovla pr-summary`.</sub>",
        "",
    ]
    return "\n".join(lines)


def pr_summary(
    root: str | Path,
    base: str,
    head: str | None = None,
    images_dir: str | Path | None = None,
    link_base: str | Path | None = None,
) -> str:
    """The comment for ``head`` (None: the working tree) against ``base`` in the DVC repository ``root``.
    Changed plots are drawn into ``images_dir`` (when given) and linked relative to ``link_base`` (the
    comment file's directory; default: as written)."""
    diffs = collect(root, base, head)
    images: dict[str, str] = {}
    if images_dir is not None:
        for plot in diffs.plots:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", plot.name).strip("_") or "plot"
            png = draw_plot(plot, base, Path(images_dir) / f"{slug}.png")
            images[plot.name] = _relative(png, link_base)
    return render(diffs, freshness(root, head), images)


def _relative(path: Path, start: str | Path | None) -> str:
    if start is None:
        return path.as_posix()
    try:
        return Path(path).resolve().relative_to(Path(start).resolve()).as_posix()
    except ValueError:
        return Path(path).resolve().as_posix()
