"""``fedoa report``: rebuild a run's report.md, accuracy.png (and report.html where fedoa has the
HTML renderer) from its results.json and metrics.jsonl."""
from __future__ import annotations

import argparse
from pathlib import Path

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
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's folder (fedoa run --out)")
    p.add_argument("--quiet", action="store_true", help="accepted for symmetry; report draws no progress bars")
    p.set_defaults(func=report)
