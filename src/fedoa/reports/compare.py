"""Rendering of a comparison: ``compare.md``, ``compare.png``, the terminal table.

Reads the summary that :mod:`fedoa.compare` builds with :mod:`fedoa.statistics`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedoa import kinds
from fedoa.statistics import AVERAGE, METHOD_KINDS

KIND_LABELS = {**kinds.LABELS, kinds.MIXED: "mixed (P+G per input)", kinds.ZERO_SHOT: "base model"}


def pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def cell(st: dict[str, Any] | None) -> str:
    if not st or st["mean"] is None:
        return "—"
    if st["std"] is None:
        return pct(st["mean"])
    return f"{pct(st['mean'])} ± {100 * st['std']:.1f}"


def present_kinds(summary: dict[str, Any], method: str) -> list[str]:
    """The model kinds a method has in any group (a row per kind, none for kinds it lacks)."""
    return [k for k in METHOD_KINDS if any(summary["table"][g][method].get(k) for g in summary["groups"])]


def table_rows(summary: dict[str, Any], group: str) -> list[list[str]]:
    cols = summary["categories"] + [AVERAGE]
    rows = []
    for method in summary["methods"]:
        for kind in present_kinds(summary, method):
            stats = summary["table"][group][method][kind]
            rows.append([method, KIND_LABELS[kind]] + [cell(stats[c] if stats else None) for c in cols])
    zs = summary["table"][group].get("zero_shot", {}).get("zero_shot")
    if zs:
        rows.append(["zero-shot", KIND_LABELS["zero_shot"]] + [cell(zs[c]) for c in cols])
    return rows


def render_compare(summary: dict[str, Any]) -> str:
    from fedoa.reports.markdown import md_table
    from fedoa.reports.rouge_table import rouge_lines

    cfg = summary.get("config") or {}
    protocol, metric = summary["protocol"], summary["metric"]
    seeds = summary["seeds"]
    lines = [
        f"# fedoa compare: {', '.join(summary['methods'])}",
        "",
        f"- protocol: **{protocol.get('name', '?')}**: {protocol.get('description', '')}",
    ]
    if summary.get("complete") is False:
        lines.append("- **incomplete**: runs are still pending (see Runs below)")
    if summary.get("holdouts"):
        lines.append(f"- held-out categories (one run each per method and seed): {', '.join(summary['holdouts'])}")
    lines += [
        f"- metric: **{metric.get('headline', '?')}** ({metric.get('description', '')}); accuracy in %, "
        f"mean ± sample standard deviation over {len(seeds)} seed(s) ({', '.join(map(str, seeds))})",
        "- per category: mean over the (client model, test set) pairs whose test set belongs to the category; "
        "average: mean over the categories, '—' while a row lacks one of them (a pending run). '—': the method has "
        "no such model (or no run finished).",
    ]
    if all(k in cfg for k in ("model", "lora", "data", "fed", "train")):
        lines.append(
            f"- model `{cfg['model']['name']}` (max_length {cfg['model']['max_length']}), LoRA r={cfg['lora']['r']}; "
            f"data `{cfg['data']['path'] or cfg['data']['source']}` (train/test per client "
            f"{cfg['data']['train_per_client'] or 'all'}/{cfg['data']['test_per_client'] or 'all'}); "
            f"{cfg['fed']['rounds']} rounds, client fraction {cfg['fed']['client_fraction']}, "
            f"{cfg['train']['epochs']} epoch(s), max_steps {cfg['train']['max_steps']}, batch {cfg['train']['batch_size']}, "
            f"lr {cfg['train']['lr']}"
        )
    lines.append("")
    head = ["method", "model"] + summary["categories"] + [AVERAGE]
    for group in summary["groups"]:
        lines += [f"## {summary['group_labels'][group]}", "", md_table(head, table_rows(summary, group)), ""]
    lines += rouge_lines(summary)  # eval.rouge: the reference's metric beside the accuracy
    lines += paired_lines(summary)
    runs = summary.get("runs") or []
    if runs:
        lines += ["## Runs", ""]
        rows = [
            [r["path"], r.get("status", ""), "" if r.get("wall_seconds") is None else f"{r['wall_seconds']:.0f}"]
            for r in runs
        ]
        lines += [md_table(["run", "status", "wall s"], rows), ""]
        failed = [r for r in runs if r.get("status") == "failed"]
        if failed:
            lines += ["Failed or missing runs are left out of the table: "
                      + ", ".join(f"{r['path']} ({r.get('error', r['status'])})" for r in failed), ""]
    return "\n".join(lines)


def plot_compare(summary: dict[str, Any], path: Path) -> Path:
    from fedoa.reports.plots import (  # plots selects the file-only Agg backend
        plt,
        save_figure,
    )

    groups = summary["groups"]
    cols = summary["categories"] + [AVERAGE]
    cmap = plt.get_cmap("tab10")
    series = []  # (label, getter, color, hatch): one color per method
    for i, method in enumerate(summary["methods"]):
        for kind in present_kinds(summary, method):  # global models hatched, mixed ones dotted
            series.append((f"{method} ({kind})", lambda g, m=method, k=kind: summary["table"][g][m][k],
                           cmap(i % 10), {"global": "//", "mixed": ".."}.get(kind, "")))
    if any(summary["table"][g].get("zero_shot", {}).get("zero_shot") for g in groups):
        series.append(("zero-shot", lambda g: summary["table"][g]["zero_shot"]["zero_shot"], "0.6", ""))
    fig, axes = plt.subplots(
        len(groups), 1, figsize=(max(8.0, 0.22 * len(cols) * len(series) + 2), 3.2 * len(groups)), squeeze=False
    )
    width = 0.8 / max(1, len(series))
    for ax, group in zip(axes[:, 0], groups):
        for i, (label, get, color, hatch) in enumerate(series):
            stats = get(group)
            means = [100 * (stats[c]["mean"] if stats and stats[c]["mean"] is not None else math.nan) for c in cols]
            errs = [100 * (stats[c]["std"] if stats and stats[c]["std"] is not None else 0.0) for c in cols]
            ax.bar([x + i * width for x in range(len(cols))], means, width, yerr=errs, label=label,
                   color=color, hatch=hatch, edgecolor="white", linewidth=0.3, capsize=2)
        ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(cols))], cols, fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy %")
        ax.set_title(summary["group_labels"][group], fontsize=9)
    axes[0, 0].legend(fontsize=7, ncol=min(4, max(1, len(series))), loc="upper right")
    fig.suptitle(f"{summary['protocol'].get('name', '')} protocol, metric {summary['metric'].get('headline', '')}, "
                 f"mean ± std over {len(summary['seeds'])} seed(s)", fontsize=10)
    return save_figure(fig, path)


def write_outputs(summary: dict[str, Any], out_dir: Path, plot: bool = True) -> None:
    from fedoa.io import write_json, write_text
    from fedoa.reports.html import render_compare_html

    write_json(out_dir / "compare.json", summary)
    write_text(out_dir / "compare.md", render_compare(summary))
    if plot:  # the page with its plots, once the comparison is complete (or re-tabulated)
        write_text(out_dir / "compare.html", render_compare_html(summary))
    if plot and summary["groups"]:
        plot_compare(summary, out_dir / "compare.png")


def print_compare(summary: dict[str, Any]) -> None:
    """The headline table (OOD first, then ID averages) on the terminal."""
    from rich.table import Table

    from fedoa.reports.markdown import console

    if not summary["groups"]:
        return
    group = summary["groups"][0]
    cols = summary["categories"] + [AVERAGE]
    table = Table(title=f"{summary['group_labels'][group]} — {summary['protocol'].get('name')} protocol, "
                        f"{summary['metric'].get('headline')} accuracy %, {len(summary['seeds'])} seed(s)")
    for h in ["method", "model"] + cols:
        table.add_column(h, justify="left" if h in ("method", "model") else "right")
    for row in table_rows(summary, group):
        table.add_row(*row)
    console().print(table)


def _signed(x: float) -> str:
    return f"{100 * x:+.1f}"


def diff_cell(d: dict[str, Any] | None) -> str:
    """``+2.1 [-0.4, +4.6]`` with a marker when the interval excludes 0."""
    if not d:
        return "—"
    mark = " **✓**" if d["distinguishable"] else ""
    return f"{_signed(d['difference'])} [{_signed(d['low'])}, {_signed(d['high'])}]{mark}"


def row_label(row: list[str]) -> str:
    method, kind = row
    return "zero-shot (base model)" if kind == kinds.ZERO_SHOT else f"{method} {KIND_LABELS[kind]}"


def paired_lines(summary: dict[str, Any]) -> list[str]:
    """One table per (focus row, group): its difference to every other row, per category."""
    from fedoa.reports.markdown import md_table

    paired = summary.get("paired") or []
    if not paired:
        return []
    cols = summary["categories"] + [AVERAGE]
    lines = [
        "## Paired differences (accuracy points, 95% interval)",
        "",
        "Each cell: A's accuracy minus B's on the same test records (per category; average: each category "
        "weighs the same, only where both rows have every category), with a 95% paired bootstrap interval "
        "over test records that keeps each record's outcomes under every seed together (scipy.stats.bootstrap); **✓**: the interval excludes 0, so the "
        "difference is distinguishable from zero; otherwise it is within noise.",
        "",
    ]
    by_focus: dict[tuple[tuple[str, str], str], list[dict]] = {}
    for p in paired:
        by_focus.setdefault((tuple(p["a"]), p["group"]), []).append(p)
    for (a, group), items in by_focus.items():
        lines += [f"### A = {row_label(list(a))}; {summary['group_labels'].get(group, group)}", ""]
        rows = [[row_label(p["b"])] + [diff_cell(p["cells"].get(c)) for c in cols] for p in items]
        lines += [md_table(["B"] + cols, rows), ""]
        avg = [p for p in items if AVERAGE in p["cells"]]
        ahead = [row_label(p["b"]) for p in avg if p["cells"][AVERAGE]["low"] > 0]
        behind = [row_label(p["b"]) for p in avg if p["cells"][AVERAGE]["high"] < 0]
        noise = [row_label(p["b"]) for p in avg if p["cells"][AVERAGE]["low"] <= 0 <= p["cells"][AVERAGE]["high"]]
        words = []
        if ahead:
            words.append(f"ahead of {', '.join(ahead)}")
        if behind:
            words.append(f"behind {', '.join(behind)}")
        if noise:
            words.append(f"not distinguishable from {', '.join(noise)}")
        if words:
            lines += [f"On the average, {row_label(list(a))} is " + "; ".join(words) + ".", ""]
    return lines
