"""``fedoa report``: rebuild a run's report.md, accuracy.png (and report.html where fedoa has the
HTML renderer) from its results.json and metrics.jsonl."""
from __future__ import annotations

import argparse
from pathlib import Path

from fedoa.cli.common import add_quiet_arg, add_run_dir_arg

EXAMPLE = """example:
  fedoa report runs/default          # rewrites runs/default/report.md, accuracy.png (+ report.html)
"""


def html_renderer():
    """``render_run_html(results: Results, metrics)`` where this fedoa has it, else None."""
    try:
        from fedoa.reports import html
    except ImportError:
        return None
    return getattr(html, "render_run_html", None)


def report(args: argparse.Namespace) -> int:
    from fedoa.finished import load_results, read_metrics
    from fedoa.io import write_text
    from fedoa.reports.markdown import render_report
    from fedoa.reports.plots import plot_run

    folder = Path(args.run_dir)
    results = load_results(folder)
    written = [write_text(folder / "report.md", render_report(results))]
    plot_run(results, folder / "accuracy.png")
    written.append(folder / "accuracy.png")
    render_html = html_renderer()
    if render_html is not None:
        metrics = read_metrics(folder)
        written.append(write_text(folder / "report.html", render_html(results, metrics)))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild a finished run's report from its results.json (+ metrics.jsonl)",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_dir_arg(p)
    add_quiet_arg(p)
    p.set_defaults(func=report)
