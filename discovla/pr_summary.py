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

import re
from pathlib import Path
from typing import Any

from discovla.pr_diffs import (
    ABLATIONS,
    HEADLINE,
    NO_CHANGE,
    RETRIEVAL,
    Diffs,
    PlotChange,
    collect,
    freshness,
)


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
