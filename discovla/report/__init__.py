"""The ``report`` stage's library: one self-contained HTML page (``reports/index.html``) of a run.

- :mod:`discovla.report.build`: :func:`build_report` / :func:`write_report` assemble the page;
- :mod:`discovla.report.tables`: metrics tables (zero-shot vs trained, DSL, twins, epochs, ablation);
- :mod:`discovla.report.plots`: loss and recall@K plots (matplotlib, Agg) as PNG bytes;
- :mod:`discovla.report.qualitative`: top-k retrievals, worst queries and confused twins as frame strips;
- :mod:`discovla.report.identity`: params that differ from the defaults, the git commit;
- :mod:`discovla.report.page`: HTML escaping, tables, inline images, the page template.
"""

from discovla.report.build import ReportError, build_report, load_trained_model, write_report

__all__ = ["ReportError", "build_report", "load_trained_model", "write_report"]
