"""Human-readable tables of a run: ``report.md`` and the terminal summary."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fedoa.kinds import LABELS, ORDER

if TYPE_CHECKING:
    from fedoa.reports.results import Results

KINDS = tuple((k, LABELS[k]) for k in ORDER)


def rank_note(comm: dict) -> str:
    """``, ranks movie 4, nyt 8`` where clients have their own LoRA ranks."""
    ranks = comm.get("client_ranks") or {}
    return ", ranks " + ", ".join(f"{c} {r}" for c, r in ranks.items()) if ranks else ""


def pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def summary_rows(results: Results) -> list[list[str]]:
    """One row per client plus the mean: ID and OOD accuracy of every evaluated model kind."""
    kinds = [(k, label) for k, label in KINDS if k in results.summary]
    rows = []
    for c in results.clients:
        row = [c]
        for k, _ in kinds:
            pc = results.per_client[k][c]
            row += [pct(pc["id_accuracy"]), pct(pc["ood_accuracy"])]
        rows.append(row)
    mean = ["**mean**"]
    for k, _ in kinds:
        s = results.summary[k]
        mean += [f"**{pct(s['id_accuracy'])}**", f"**{pct(s['ood_accuracy'])}**"]
    rows.append(mean)
    return rows


def summary_header(results: Results) -> list[str]:
    head = ["client"]
    for k, label in KINDS:
        if k in results.summary:
            head += [f"{label} ID", f"{label} OOD"]
    return head


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def matrix_table(results: Results, kind: str) -> str:
    sets = list(results.test_sets)
    rows = []
    for c in results.clients:
        row = results.matrices[kind][c]
        rows.append([c] + [pct(row[s]) if s in row else "" for s in sets])
    return md_table([f"{kind} model of \\ test set"] + sets, rows)


def departures(config: dict[str, Any]) -> list[str]:
    """The method's settings (and the personal schedule) that differ from the code defaults, which
    are the reference's choices: a report says when a run is a variant."""
    from fedoa.config import RunConfig

    method, default = config.get("method", ""), RunConfig().to_dict()
    keys = [(method, k) for k in config.get(method, {}) if isinstance(config.get(method), dict)]
    keys += [("fed", k) for k in ("personal_start_round", "personal_init")]
    return [f"{s}.{k} = {config[s][k]!r}" for s, k in keys
            if s in default and k in default[s] and config.get(s, {}).get(k, default[s][k]) != default[s][k]]


def data_lines(data: dict[str, Any]) -> list[str]:
    """What the data checks found: prompts cut to fit, repeated records, test records seen in training."""
    lines = [f"- client {c}: {n} training prompt(s) cut to fit model.max_length" for c, n in data.get("truncated_train", {}).items()]
    lines += [f"- test set {s}: {n} prompt(s) cut to fit model.max_length" for s, n in data.get("truncated_test", {}).items()]
    for c, counts in data.get("checks", {}).items():
        lines.append(f"- client {c}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if v))
    return lines


def setting_lines(results: Results) -> list[str]:
    lines = []
    changed = departures(results.config)
    if changed:
        lines.append(f"- not the reference's choices (fedoa's options): {', '.join(changed)}")
    dp = getattr(results, "dp", None)
    if dp:
        lines.append(f"- differential privacy (DP-FedAvg): noise multiplier {dp['noise_multiplier']}, clip norm "
                     f"{dp['clip_norm']}: (epsilon, delta) = ({dp['epsilon']:.2f}, {dp['delta']:g}) for the global adapter")
    return lines


def render_report(results: Results) -> str:
    cfg = results.config
    comm = results.communication
    timing = results.timing
    parts = [
        f"# fedoa run: {results.method}",
        "",
        f"- model: `{cfg['model']['name']}`, LoRA r={cfg['lora']['r']} on {', '.join(cfg['lora']['target_modules'])}",
        f"- data: `{cfg['data']['source']}` ({len(results.clients)} clients, partition {cfg['data']['partition']})",
        f"- protocol: **{results.protocol['name']}**: {results.protocol['description']}",
        f"- metric: **{results.metric['headline']}** ({results.metric['description']}), accuracy in %",
        f"- rounds: {cfg['fed']['rounds']}, client fraction {cfg['fed']['client_fraction']}, "
        f"lr {cfg['train']['lr']}, epochs {cfg['train']['epochs']}, batch {cfg['train']['batch_size']}",
        f"- upload per round: {comm.get('bytes_up_per_round', 0) / 1e6:.2f} MB; per client and round "
        f"{comm.get('bytes_up_per_client_round', 0) / 1e3:.1f} kB ({comm.get('upload_format', 'float32')}"
        f"{rank_note(comm)}); wall time {timing.get('wall_seconds', 0):.0f} s",
        *setting_lines(results),
        "",
        "## ID / OOD accuracy",
        "",
        md_table(summary_header(results), summary_rows(results)),
        "",
    ]
    if results.ood_groups:
        parts += ["## OOD groups", ""] + [
            f"- {kind}: " + ", ".join(
                f"{k[4:-9]} {pct(v)}" for k, v in s.items() if k.startswith("ood_") and k != "ood_accuracy"
            )
            for kind, s in results.summary.items()
        ] + [""]
    for kind in results.matrices:
        parts += [f"## Matrix: {kind}", "", matrix_table(results, kind), ""]
    if "generation" in results:
        parts += ["## Generation exact match (secondary metric)", ""]
        for kind, s in results.generation["summary"].items():
            parts.append(f"- {kind}: ID {pct(s['id_accuracy'])}, OOD {pct(s['ood_accuracy'])}")
        parts.append("")
    if results.rouge:
        parts += rouge_section(results.rouge)
    data = getattr(results, "data", None) or {}
    if any(data.values()):
        parts += ["## Data checks", ""] + data_lines(data) + [""]
    if results.failures:
        parts += ["## Failures", ""] + [f"- {f}" for f in results.failures] + [""]
    return "\n".join(parts)


def rouge_section(rouge: dict[str, Any]) -> list[str]:
    """The reference's generation scoring beside the headline: mean ROUGE F-measure in %, per model kind."""
    types = list(rouge["summary"])
    dec = rouge.get("decoding", {})
    head = ["model"] + [f"{t} {g}" for t in types for g in ("ID", "OOD")]
    kinds = [k for k, _ in KINDS if any(k in rouge["summary"][t] for t in types)]
    rows = [[LABELS.get(k, k)] + [pct(rouge["summary"][t].get(k, {}).get(f"{g}_rouge")) for t in types
                                      for g in ("id", "ood")] for k in kinds]
    return ["## ROUGE: the reference's generation scoring (secondary metric)", "",
            f"{rouge['description']}; {dec.get('num_beams')} beams, at most {dec.get('max_new_tokens')} new tokens; "
            "F-measure in %.", "", md_table(head, rows), ""]


def console():
    """A rich console; not a terminal (a log, a pipe): wide enough that no column is cut."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def print_summary(results: Results) -> None:
    """The ID/OOD table on the terminal (rich)."""
    from rich.table import Table

    table = Table(title=f"{results.method}: accuracy % ({results.metric['headline']}, {results.protocol['name']})")
    for h in summary_header(results):
        table.add_column(h, justify="right" if h != "client" else "left")
    for row in summary_rows(results):
        table.add_row(*[c.replace("**", "") for c in row])
    console().print(table)
