"""Does FedOA's regularizer move the personal features toward the global ones? (issue 20, item 5)

Reads the personal-step lines of every run's ``metrics.jsonl`` in a comparison folder
(``runs/<method>/seed<k>/``) that carry the feature-distance trace (``fedoa.trace_reg``):

- ``reg_before`` / ``reg_after``: D(h_P(x), h_G(x)) over all the client's training data, without
  dropout, before and after the personal step (the step's start and end point);
- ``reg_first`` / ``reg_last``: the same distance on the first and the last optimizer step's batch
  (with dropout, as trained on).

Writes ``regularizer.md`` (a summary per method and round, and every client's row) and
``regularizer.png`` (per client, reg at the start and end of every personal step, one line per
method and seed) into the folder, or into ``--out``.

  .venv/bin/python benchmarks/regularizer.py benchmarks/evidence/regularizer
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

KEYS = ("reg_before", "reg_first", "reg_last", "reg_after")


def traced_steps(folder: Path) -> list[dict]:
    """One dict per (method, seed, round, client) personal step that carries the trace."""
    rows = []
    for metrics in sorted(folder.glob("runs/*/seed*/metrics.jsonl")):
        method, seed = metrics.parent.parent.name, int(metrics.parent.name.removeprefix("seed"))
        for line in metrics.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a torn last line of a run still going
                continue
            if entry.get("phase") == "personal" and all(k in entry for k in KEYS):
                rows.append({"method": method, "seed": seed, **{k: entry[k] for k in
                             ("round", "client", "task_loss", "steps", *KEYS)}})
    return rows


def change(row: dict) -> float | None:
    """Relative change of the whole-data distance over the step: (after - before) / before; None
    from a zero start (a fresh personal adapter against an untrained global one: the same features)."""
    return (row["reg_after"] - row["reg_before"]) / row["reg_before"] if row["reg_before"] else None


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def summary_lines(rows: list[dict]) -> list[str]:
    lines = ["| method | round | runs x clients | steps | reg before | reg first batch | reg last batch | "
             "reg after | change (after/before - 1) | task loss |", "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["round"]), []).append(r)
    for (method, round_), group in sorted(groups.items()):
        mean = {k: statistics.fmean(r[k] for r in group) for k in (*KEYS, "task_loss")}
        changes = [c for c in map(change, group) if c is not None]
        spread = (f"{percent(statistics.fmean(changes))} (min {percent(min(changes))}, max {percent(max(changes))})"
                  if changes else "n/a")
        lines.append(f"| {method} | {round_} | {len(group)} | {group[0]['steps']} | "
                     + " | ".join(f"{mean[k]:.2f}" for k in KEYS)
                     + f" | {spread}"
                     + f" | {mean['task_loss']:.3f} |")
    return lines


def client_lines(rows: list[dict]) -> list[str]:
    lines = ["| client | method | seed | round | reg before | reg first batch | reg last batch | reg after | change |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["client"], r["method"], r["seed"], r["round"])):
        lines.append(f"| {r['client']} | {r['method']} | {r['seed']} | {r['round']} | "
                     + " | ".join(f"{r[k]:.2f}" for k in KEYS) + f" | {percent(change(r))} |")
    return lines


def plot(rows: list[dict], path: Path) -> None:
    """Per client: reg over all its data at the start and end of every personal step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = sorted({r["client"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    cols = min(4, len(clients))
    nrows = -(-len(clients) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.9 * nrows), squeeze=False)
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    for ax, client in zip(axes.flat, clients):
        for (method, seed) in sorted({(r["method"], r["seed"]) for r in rows if r["client"] == client}):
            steps = sorted((r for r in rows if (r["client"], r["method"], r["seed"]) == (client, method, seed)),
                           key=lambda r: r["round"])
            xs, ys = [], []
            for r in steps:
                xs += [r["round"] - 1, r["round"] - 0.1]
                ys += [r["reg_before"], r["reg_after"]]
            ax.plot(xs, ys, marker="o", ms=3, color=colors[method], alpha=0.85,
                    label=method if seed == min(x["seed"] for x in rows if x["method"] == method) else None)
        ax.set_title(client, fontsize=9)
        ax.set_xticks(sorted({r["round"] - 1 for r in rows}),
                      [f"round {r} start" for r in sorted({r["round"] for r in rows})], fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(clients):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("FedOA feature distance D(h_P, h_G) over the client's data: start and end of each personal step "
                 "(one line per seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(rows: list[dict], folder: Path) -> str:
    return "\n".join([
        f"# FedOA's regularizer: feature distance per personal step ({folder.as_posix()})", "",
        "D(h_P(x), h_G(x)) as trained (fedoa.distance, fedoa.feature). *before/after*: over all the client's "
        "training data without dropout, at the start and end of the personal step; *first/last batch*: on the "
        "first and last optimizer step's batch, with dropout. Each run measures against its own global adapter.", "",
        "## Mean over clients and seeds", "", *summary_lines(rows), "",
        "## Every client", "", *client_lines(rows), ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="a fedoa compare output folder (runs/<method>/seed<k>/metrics.jsonl)")
    p.add_argument("--out", type=Path, help="where regularizer.md/.png go (default: the folder)")
    args = p.parse_args(argv)
    rows = traced_steps(args.folder)
    if not rows:
        print(f"regularizer.py: no personal step with reg_before/reg_after under {args.folder}/runs "
              "(run FedOA with fedoa.trace_reg=true)", file=sys.stderr)
        return 2
    out = args.out or args.folder
    out.mkdir(parents=True, exist_ok=True)
    (out / "regularizer.md").write_text(render(rows, args.folder))
    plot(rows, out / "regularizer.png")
    print("\n".join(summary_lines(rows)))
    print(f"wrote {out / 'regularizer.md'} and {out / 'regularizer.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
