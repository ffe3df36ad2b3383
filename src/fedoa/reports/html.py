"""Self-contained HTML reports: ``report.html`` for a run, ``compare.html`` for a comparison.

Everything is inline (CSS, base64 PNG plots, one tiny script), so a file opens offline, in a
mail attachment or from a CI artifact, with no CDN and no sibling files.
"""
from __future__ import annotations

import base64
import io
import json
import math
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from fedoa import kinds
from fedoa.io import write_text
from fedoa.reports.findings import known, mean_by_round, run_findings
from fedoa.reports.markdown import summary_header, summary_rows
from fedoa.reports.plots import plt  # selects the file-only Agg backend

if TYPE_CHECKING:
    from fedoa.reports.results import Results

KIND_COLORS = {kinds.PERSONAL: "C0", kinds.MIXED: "C2", kinds.GLOBAL: "C1", kinds.ZERO_SHOT: "0.5"}
CURVES = (("task_loss", "task loss"), ("reg", "regularizer distance"), ("prox", "proximal term"),
          ("update_norm", "global-update L2 norm"))

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}th,td{border:1px solid #ccc;padding:.2em .6em}
td{text-align:right}td:first-child{text-align:left}tr.mean td{font-weight:bold;background:#f4f4f4}
.plot{margin:1em 0}.plot img{max-width:100%;height:auto}.findings li{margin:.3em 0}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1em}
dl.header{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}dl.header dt{font-weight:bold}"""

# Marks the page as rendered only when every plot decoded, so a headless check can tell.
SCRIPT = """window.addEventListener('load', function () {
  var broken = Array.prototype.filter.call(document.images, function (i) { return !i.complete || !i.naturalWidth; });
  document.body.setAttribute('data-rendered', broken.length ? 'broken' : 'yes');
});"""


# ---------------------------------------------------------------- shared pieces

def write_html(text: str, path: Path) -> None:
    """Atomic and durable (fedoa.io): readers never see half a page."""
    write_text(path, text)


def page(title: str, body: list[str]) -> str:
    head = f'<meta charset="utf-8"><title>{escape(title)}</title><style>{STYLE}</style>'
    return (f'<!DOCTYPE html>\n<html lang="en"><head>{head}</head>\n<body>\n' + "\n".join(body)
            + f"\n<script>{SCRIPT}</script>\n</body></html>\n")


def round_axis(ax) -> None:
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.ticklabel_format(axis="y", useOffset=False)  # losses like 10.80 read as such, not +1.08e1


def figure_html(fig, alt: str) -> str:
    """The figure as an inline PNG inside a ``.plot`` container; closes the figure."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")  # keeps outside legends
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<figure class="plot"><img src="data:image/png;base64,{data}" alt="{escape(alt)}">'
            f"<figcaption>{escape(alt)}</figcaption></figure>")


def html_table(header: list[str], rows: list[list[str]], bold_last: bool = False) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = ["<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows]
    if bold_last and body:
        body[-1] = body[-1].replace("<tr>", '<tr class="mean">', 1)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def bullet_list(items: list[str], cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<ul{attr}>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def header_list(pairs: list[tuple[str, str]]) -> str:
    return '<dl class="header">' + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in pairs) + "</dl>"


def human_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB" if n >= 1e3 else f"{n:.0f} B"


# ---------------------------------------------------------------- run: plots

def training_curves(metrics: list[dict]) -> str | None:
    panels = [(key, label, mean_by_round(metrics, key)) for key, label in CURVES]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False, sharex=True)
    for ax, (_, label, by_phase) in zip(axes[0], panels):
        for phase, curve in by_phase.items():
            ax.plot(*zip(*curve), marker="o", label=phase, color=KIND_COLORS.get(phase))
        ax.set_title(f"{label} (mean over clients)", fontsize=10)
        round_axis(ax)
        ax.legend(fontsize=8)
    return figure_html(fig, "Training curves per round: " + ", ".join(p[1] for p in panels))


def plot_accuracy(ax, rounds: list[dict], value, **style) -> None:
    """One line over the rounds; `value(r)` reads a round's accuracy in [0, 1] or None."""
    ys = [100 * v if known(v := value(r)) else math.nan for r in rounds]
    if any(not math.isnan(y) for y in ys):
        ax.plot([r["round"] for r in rounds], ys, **style)


def accuracy_by_round(rounds: list[dict]) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, label in zip(axes, ("id_accuracy", "ood_accuracy"), ("ID", "OOD")):
        for kind in kinds.ORDER:
            plot_accuracy(ax, rounds, lambda r, k=kind: r["summary"].get(k, {}).get(key), marker="o",
                          label=kinds.LABELS[kind], color=KIND_COLORS[kind])
        ax.set_title(f"{label} accuracy % per round (mean over clients)", fontsize=10)
        round_axis(ax)
        ax.legend(fontsize=8)
    return figure_html(fig, "ID and OOD accuracy per round for each model kind")


def accuracy_by_round_per_client(rounds: list[dict], clients: list[str]) -> str:
    cols = min(4, len(clients))
    nrows = math.ceil(len(clients) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), squeeze=False, sharey=True)
    for ax, client in zip(axes.flat, clients):
        for kind in kinds.ORDER:
            for key, ls in (("id_accuracy", "-"), ("ood_accuracy", "--")):
                plot_accuracy(ax, rounds, lambda r, k=kind: r["per_client"].get(k, {}).get(client, {}).get(key),
                              ls=ls, marker=".", color=KIND_COLORS[kind])
        ax.set_title(client, fontsize=9)
        round_axis(ax)
    for ax in axes.flat[len(clients):]:
        ax.axis("off")
    handles = [Line2D([], [], color=c, label=kinds.LABELS[k]) for k, c in KIND_COLORS.items()]
    handles += [Line2D([], [], color="k", ls="-", label="ID"), Line2D([], [], color="k", ls="--", label="OOD")]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(handles), fontsize=8)
    return figure_html(fig, "ID (solid) and OOD (dashed) accuracy per round for each client")


def matrix_heatmap(results: Results, kind: str) -> str:
    sets, clients = list(results.test_sets), results.clients
    grid = [[results.matrices[kind][c].get(s) for s in sets] for c in clients]
    grid = [[math.nan if v is None else 100 * v for v in row] for row in grid]
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(sets), 1.2 + 0.4 * len(clients)))
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis")
    ax.set_xticks(range(len(sets)), sets, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(clients)), clients, fontsize=8)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="w" if v < 60 else "k")
            if results.id_set.get(clients[i]) == sets[j]:  # outline each client's own (ID) set
                ax.add_patch(plt.Rectangle((j - .5, i - .5), 1, 1, fill=False, edgecolor="red", lw=1.5))
    ax.set_title(f"{kinds.LABELS.get(kind, kind)} model of client × test set (accuracy %)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return figure_html(fig, f"Accuracy heatmap of the {kinds.LABELS.get(kind, kind)} models (ID set outlined)")


# ---------------------------------------------------------------- run: page

def run_header(results: Results) -> list[tuple[str, str]]:
    cfg = results.config
    comm, timing = results.communication, results.timing
    data = cfg.get("data", {})
    return [
        ("method", results.method),
        ("protocol", f"{results.protocol['name']}: {results.protocol.get('description', '')}"),
        ("metric", f"{results.metric['headline']}: {results.metric.get('description', '')}"),
        ("model", str(cfg.get("model", {}).get("name", "?"))),
        ("data", f"{data.get('path') or data.get('source', '?')} ({len(results.clients)} clients, "
                 f"partition {data.get('partition', '?')})"),
        ("rounds", str(comm.get("rounds", cfg.get("fed", {}).get("rounds", "?")))),
        ("wall time", f"{timing.get('wall_seconds', 0):.1f} s"),
        ("upload per round", human_bytes(comm.get("bytes_up_per_round"))),
    ]


def run_tables(results: Results) -> list[str]:
    rows = [[c.replace("**", "") for c in row] for row in summary_rows(results)]
    comm, timing = results.communication, results.timing
    comm_rows = [[k.replace("_", " "), human_bytes(comm[k])] for k in
                 ("adapter_bytes", "bytes_up_per_client_round", "bytes_up_per_round", "bytes_down_per_round",
                  "bytes_up_total") if k in comm]
    if "upload_format" in comm:  # what the sizes above were measured in
        comm_rows.append(["upload format", str(comm["upload_format"])])
    if comm.get("client_ranks"):
        comm_rows.append(["LoRA ranks", ", ".join(f"{c} {r}" for c, r in comm["client_ranks"].items())])
    time_rows = [[k.replace("_seconds", ""), f"{v:.1f} s"] for k, v in timing.items() if known(v)]
    parts = ["<h2>ID / OOD accuracy per client (%)</h2>", html_table(summary_header(results), rows, bold_last=True),
             "<h2>Communication</h2>", html_table(["quantity", "size"], comm_rows),
             "<h2>Time</h2>", html_table(["stage", "seconds"], time_rows)]
    if results.failures:
        parts += ["<h2>Failures</h2>", bullet_list(results.failures)]
    config = json.dumps(results.config, indent=2)
    return parts + [f"<details><summary>Configuration</summary><pre>{escape(config)}</pre></details>"]


def render_run_html(results: Results, metrics: list[dict]) -> str:
    body = [f"<h1>fedoa run: {escape(results.method)}</h1>", header_list(run_header(results)),
            "<h2>What this run shows</h2>", bullet_list(run_findings(results, metrics), "findings"),
            "<h2>Per-round curves</h2>"]
    curves = training_curves(metrics)
    body.append(curves or "<p>No training metrics were logged.</p>")
    rounds = results.rounds
    if rounds:
        body.append(accuracy_by_round(rounds))
        if len(results.clients) <= 16:  # beyond that the small multiples are unreadable
            body.append(accuracy_by_round_per_client(rounds, results.clients))
    body += ["<h2>Accuracy matrices</h2>", '<div class="plots">',
             *[matrix_heatmap(results, k) for k in results.matrices], "</div>"]
    body += run_tables(results)
    return page(f"fedoa run: {results.method}", body)
