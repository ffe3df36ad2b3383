"""The human reports of a finished run: what the round driver's publisher renders into the
folder that is then moved into place (``report.md``, ``accuracy.png``, ``report.html``).

The driver takes this as a parameter (:data:`fedoa.runtime.driver.Renderer`) instead of importing
the rendering stack: a run that only needs its numbers (a test, a benchmark) skips it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fedoa.io import write_text
from fedoa.reports.html import render_run_html
from fedoa.reports.markdown import render_report
from fedoa.reports.plots import plot_run
from fedoa.reports.results import Results


def render_reports(folder: Path, results: Results, metrics: list[dict[str, Any]]) -> None:
    write_text(folder / "report.md", render_report(results))
    plot_run(results, folder / "accuracy.png")
    write_text(folder / "report.html", render_run_html(results, metrics))
