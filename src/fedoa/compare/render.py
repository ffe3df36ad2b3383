"""Rendering of a comparison: ``compare.md``, ``compare.html``, ``compare.png``, the terminal
table and the findings in words.

Reads the summary that :mod:`fedoa.compare.runner` builds with :mod:`fedoa.compare.stats`; uses the
run reports' building blocks (Markdown tables, the HTML page, plots) from :mod:`fedoa.reports`.
"""
from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Any

from fedoa import kinds
from fedoa.compare.stats import AVERAGE, METHOD_KINDS
from fedoa.io import write_json, write_text
from fedoa.reports.findings import known, points, same
from fedoa.reports.html import bullet_list, figure_html, header_list, html_table, page
from fedoa.reports.markdown import md_table, pct
from fedoa.reports.plots import plt, save_figure  # plots selects the file-only Agg backend

KIND_LABELS = {**kinds.LABELS, kinds.MIXED: "mixed (P+G per input)", kinds.ZERO_SHOT: "base model"}


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


UNINFORMATIVE_MARK = "†"


def marked(summary: dict[str, Any], group: str) -> list[str]:
    """The group's column heads: each category, marked when it is uninformative, then the average."""
    skip = (summary.get("uninformative") or {}).get(group, [])
    return [f"{c} {UNINFORMATIVE_MARK}" if c in skip else c for c in summary["categories"]] + [AVERAGE]


def uninformative_note(summary: dict[str, Any], group: str) -> list[str]:
    skip = (summary.get("uninformative") or {}).get(group, [])
    if not skip:
        return []
    return [f"{UNINFORMATIVE_MARK} uninformative: every compared model gives the same outcome on every record of "
            f"{', '.join(skip)} (all rows, seeds, client models and rotations that scored it), so it cannot tell "
            "any two models apart; shown, but kept out of the average.", ""]


def variance_note(summary: dict[str, Any]) -> str:
    """Which variance the intervals and the spread over seeds cover."""
    data = (summary.get("config") or {}).get("data", {})
    seeds = len(summary.get("seeds") or [])
    if seeds < 2:
        return ("One seed: the intervals cover only which test records were drawn, not the spread between "
                "training runs.")
    if data.get("train_subset_seed") == "run" and data.get("train_per_client"):
        return (f"What varies between the {seeds} seeds: the training order, the adapters' initialization and "
                "each client's training subset (`data.train_subset_seed = \"run\"`); the test sets are the same "
                "in every seed.")
    why = ("every client trains on all its records" if not data.get("train_per_client") else
           "every seed trains on the same subset, drawn with `data.split_seed` (`data.train_subset_seed = \"split\"`)")
    return (f"What varies between the {seeds} seeds: the training order and the adapters' initialization only; "
            f"{why}, so neither the intervals nor the standard deviations include training-sample variance.")


def render_compare(summary: dict[str, Any]) -> str:
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
        "average: mean over the informative categories (one marked † is left out), '—' while a row lacks one of them "
        "(a pending run). '—': the method has no such model (or no run finished).",
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
    lines.append(f"- {variance_note(summary)}")
    lines.append("")
    for group in summary["groups"]:
        head = ["method", "model"] + marked(summary, group)
        lines += [f"## {summary['group_labels'][group]}", "", md_table(head, table_rows(summary, group)), ""]
        lines += uninformative_note(summary, group)
    lines += rouge_lines(summary)  # eval.rouge: the reference's metric beside the accuracy
    lines += paired_lines(summary)
    runs = summary.get("runs") or []
    if runs:
        lines += ["## Runs", ""]
        rows = [
            [r["path"], r.get("status", ""), "" if r.get("wall_seconds") is None else f"{r['wall_seconds']:.0f}",
             upload_cell(r)]
            for r in runs
        ]
        lines += [md_table(["run", "status", "wall s", "upload per client-round"], rows), ""]
        failed = [r for r in runs if r.get("status") == "failed"]
        if failed:
            lines += ["Failed or missing runs are left out of the table: "
                      + ", ".join(f"{r['path']} ({r.get('error', r['status'])})" for r in failed), ""]
    return "\n".join(lines)


def plot_compare(summary: dict[str, Any], path: Path) -> Path:
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
    """``+2.1 [-0.4, +4.6]`` with a marker when the interval excludes 0 (or that the category is uninformative)."""
    if not d:
        return "—"
    mark = f" {UNINFORMATIVE_MARK}" if d.get("uninformative") else " **✓**" if d["distinguishable"] else ""
    return f"{_signed(d['difference'])} [{_signed(d['low'])}, {_signed(d['high'])}]{mark}"


def row_label(row: list[str]) -> str:
    method, kind = row
    return "zero-shot (base model)" if kind == kinds.ZERO_SHOT else f"{method} {KIND_LABELS[kind]}"


def paired_lines(summary: dict[str, Any]) -> list[str]:
    """One table per (focus row, group): its difference to every other row, per category."""
    paired = summary.get("paired") or []
    if not paired:
        return []
    cols = summary["categories"] + [AVERAGE]
    lines = [
        "## Paired differences (accuracy points, 95% interval)",
        "",
        "Each cell: A's accuracy minus B's on the same test records (per category; average: each informative "
        "category weighs the same, only where both rows have every one), with a 95% bootstrap interval that "
        "resamples whole test records within each category, each record carrying every outcome that scored it "
        "(every client model, held-out rotation and seed: scipy.stats.bootstrap, percentile); **✓**: the "
        "interval excludes 0, so the difference is distinguishable from zero; otherwise it is within noise. "
        + variance_note(summary),
        "",
    ]
    by_focus: dict[tuple[tuple[str, str], str], list[dict]] = {}
    for p in paired:
        by_focus.setdefault((tuple(p["a"]), p["group"]), []).append(p)
    for (a, group), items in by_focus.items():
        lines += [f"### A = {row_label(list(a))}; {summary['group_labels'].get(group, group)}", ""]
        rows = [[row_label(p["b"])] + [diff_cell(p["cells"].get(c)) for c in cols] for p in items]
        lines += [md_table(["B"] + marked(summary, group), rows), ""]
        lines += uninformative_note(summary, group)
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


# ---------------------------------------------------------------- findings in words

def paired_by_focus(summary: dict[str, Any], group: str) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for p in summary.get("paired") or []:
        if p["group"] == group and p["cells"].get(AVERAGE):
            out.setdefault(tuple(p["a"]), []).append(p)
    return out


def best_average(summary: dict[str, Any], group: str) -> str | None:
    rows = [(row_label([m, k]), st[AVERAGE]) for m, per_kind in summary["table"][group].items()
            for k, st in per_kind.items() if st and known(st.get(AVERAGE, {}).get("mean"))]
    if not rows:
        return None
    top = max(st["mean"] for _, st in rows)
    best = [f"{name} ({cell(st)})" for name, st in rows if same(st["mean"], top)]
    return f"{group.upper()}: highest average: {', '.join(best)}."


def distinct_pairs(summary: dict[str, Any], group: str) -> list[dict]:
    """A-vs-B and B-vs-A are one comparison: the first one listed speaks for both."""
    seen, out = set(), []
    for p in (p for items in paired_by_focus(summary, group).values() for p in items):
        key = frozenset((tuple(p["a"]), tuple(p["b"])))
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def difference_words(p: dict) -> str:
    d = p["cells"][AVERAGE]
    way = "ahead of" if d["difference"] > 0 else "behind"
    return (f"{row_label(p['a'])} is {way} {row_label(p['b'])} by {points(d['difference'])} points "
            f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]")


def paired_sentence(summary: dict[str, Any], group: str) -> str | None:
    pairs = distinct_pairs(summary, group)
    clear = [p for p in pairs if p["cells"][AVERAGE]["distinguishable"]]
    if not pairs:
        return None
    if not clear:
        return (f"{group.upper()}: none of the {len(pairs)} paired differences on the average is "
                "distinguishable from zero (every 95% interval contains 0).")
    return (f"{group.upper()}: {len(clear)} of {len(pairs)} paired differences on the average are distinguishable "
            "from zero: " + "; ".join(map(difference_words, clear)) + "; the others are within noise.")


def compare_findings(summary: dict[str, Any]) -> list[str]:
    """Per group: the best average row, then which average differences are distinguishable from zero."""
    found = [f(summary, g) for g in summary["groups"] for f in (best_average, paired_sentence)]
    return [f for f in found if f]


# ---------------------------------------------------------------- the HTML page

def bars_by_category(summary: dict[str, Any], group: str) -> str:
    cols = summary["categories"] + [AVERAGE]
    hatches = {kinds.GLOBAL: "//", kinds.MIXED: ".."}  # one color per method, one hatch per kind
    series = [(f"{m} ({KIND_LABELS[k]})", summary["table"][group][m][k], f"C{i % 10}", hatches.get(k, ""))
              for i, m in enumerate(summary["methods"]) for k in present_kinds(summary, m)]
    zero = summary["table"][group].get("zero_shot", {}).get("zero_shot")
    if zero:
        series.append(("zero-shot", zero, "0.6", ""))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(12, 4))
    for i, (label, stats, color, hatch) in enumerate(series):
        get = lambda c, f: (stats or {}).get(c, {}).get(f)  # noqa: E731
        means = [100 * get(c, "mean") if known(get(c, "mean")) else math.nan for c in cols]
        errs = [100 * get(c, "std") if known(get(c, "std")) else 0.0 for c in cols]
        ax.bar([x + i * width for x in range(len(cols))], means, width, yerr=errs, label=label, color=color,
               hatch=hatch, edgecolor="white", linewidth=0.3, capsize=2)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(cols))], cols, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy %")
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.set_title(f"{summary['group_labels'].get(group, group)}: mean ± std over seeds", fontsize=9)
    return figure_html(fig, f"Accuracy per category, {group.upper()}: bars are means, whiskers one std over seeds")


def forest_plot(summary: dict[str, Any], group: str) -> str | None:
    focus = paired_by_focus(summary, group)
    if not focus:
        return None
    cols = min(2, len(focus))
    nrows = math.ceil(len(focus) / cols)
    tallest = max(len(v) for v in focus.values())
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 0.6 + 0.25 * tallest * nrows + 0.5 * nrows),
                             squeeze=False, sharex=True)  # one scale: panels compare at a glance
    for ax, (a, items) in zip(axes.flat, focus.items()):
        for y, p in enumerate(items):
            d = p["cells"][AVERAGE]
            color = "C3" if d["distinguishable"] else "0.5"
            ax.errorbar(100 * d["difference"], y, xerr=[[100 * (d["difference"] - d["low"])],
                        [100 * (d["high"] - d["difference"])]], fmt="o", color=color, capsize=2, ms=4)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(items)), [row_label(p["b"]) for p in items], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"A = {row_label(list(a))}", fontsize=9)
        ax.set_xlabel("A − B, accuracy points (average)", fontsize=8)
    for ax in axes.flat[len(focus):]:
        ax.axis("off")
    return figure_html(fig, f"Paired differences on the average, {group.upper()}: point and 95% interval per B row; "
                            "red where the interval excludes zero")


def render_compare_html(summary: dict[str, Any]) -> str:
    cfg = summary.get("config") or {}
    head = [("methods", ", ".join(summary["methods"])), ("seeds", ", ".join(map(str, summary["seeds"]))),
            ("protocol", f"{summary['protocol'].get('name', '?')}: {summary['protocol'].get('description', '')}"),
            ("metric", str(summary["metric"].get("headline", "?"))),
            ("model", str(cfg.get("model", {}).get("name", "?"))),
            ("wall time", f"{summary.get('wall_seconds') or 0:.1f} s"), ("intervals", variance_note(summary))]
    if summary.get("complete") is False:
        head.append(("status", "incomplete: some runs are still pending"))
    body = [f"<h1>fedoa compare: {escape(', '.join(summary['methods']))}</h1>", header_list(head),
            "<h2>What the comparison shows</h2>", bullet_list(compare_findings(summary), "findings")]
    for group in summary["groups"]:
        cols = ["method", "model"] + marked(summary, group)
        body += [f"<h2>{escape(summary['group_labels'].get(group, group))} (accuracy %, mean ± std)</h2>",
                 html_table(cols, table_rows(summary, group))]
        body += [f"<p>{escape(line)}</p>" for line in uninformative_note(summary, group) if line]
        body.append(bars_by_category(summary, group))
    forests = [(g, forest_plot(summary, g)) for g in summary["groups"]]
    if any(f for _, f in forests):
        body.append("<h2>Paired differences (average column, 95% interval)</h2>")
        body += [f for _, f in forests if f]
    runs = summary.get("runs") or []
    if runs:
        rows = [[r["path"], r.get("status", ""), "" if r.get("wall_seconds") is None else f"{r['wall_seconds']:.1f}",
                 upload_cell(r)] for r in runs]
        body += ["<h2>Runs</h2>", html_table(["run", "status", "wall s", "upload per client-round"], rows)]
    return page("fedoa compare", body)


# ---------------------------------------------------------------- ROUGE beside the accuracy

def rouge_lines(summary: dict[str, Any]) -> list[str]:
    """``compare.md``'s ROUGE section (nothing when no run scored ROUGE)."""
    rouge = summary.get("rouge")
    if not rouge:
        return []
    dec = rouge["decoding"]
    note = (f"- mean {rouge['type']} F-measure in % (rouge-score) of the answer generated by beam search "
            f"({dec.get('num_beams')} beams, at most {dec.get('max_new_tokens')} new tokens) against the record's "
            f"output; mean ± sample standard deviation over seeds; {rouge['runs']} run(s) scored it")
    lines = [f"## {rouge['type']}: the reference's generation scoring beside the accuracy", "", note, ""]
    head = ["method", "model"] + rouge["categories"] + [AVERAGE]
    for group in rouge["groups"]:
        lines += [f"### {rouge['group_labels'][group]}", "", md_table(head, table_rows(rouge, group)), ""]
    return lines


def upload_cell(run: dict) -> str:
    """The bytes one client sent per round in a run ("" when unknown or nothing was sent)."""
    n = run.get("bytes_up_per_client_round")
    return f"{n:,.0f} B" if n else ""
