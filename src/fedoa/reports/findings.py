"""Plain-words findings generated from the numbers of a run.

Each function returns a sentence (or None when the data to say it is missing), so the HTML and
any other report can list only what the numbers support.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fedoa import kinds
from fedoa.reports.markdown import pct

if TYPE_CHECKING:
    from fedoa.reports.results import Results


def known(*values: float | None) -> bool:
    return all(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in values)


def same(a: float, b: float) -> bool:
    return math.isclose(a, b, abs_tol=5e-4)


def points(x: float) -> str:
    return f"{100 * abs(x):.1f}"


def best_kind_sentence(summary: dict[str, Any], key: str, label: str) -> str | None:
    scores = {k: s[key] for k, s in summary.items() if known(s.get(key))}
    if not scores:
        return None
    top = max(scores.values())
    best = [kinds.LABELS.get(k, k) for k, v in scores.items() if same(v, top)]
    if len(best) == len(scores) > 1:
        return f"On {label} every model kind scores the same ({pct(top)})."
    if len(best) > 1:
        return f"Best on {label}: {', '.join(best[:-1])} and {best[-1]}, tied at {pct(top)}."
    return f"Best on {label}: {best[0]} ({pct(top)})."


def global_vs_personal(results: Results, key: str, label: str) -> str | None:
    per = results.per_client
    if kinds.GLOBAL not in per or kinds.PERSONAL not in per:
        return None
    pairs = [(per[kinds.GLOBAL][c][key], per[kinds.PERSONAL][c][key]) for c in results.clients]
    pairs = [(g, p) for g, p in pairs if known(g, p)]
    if not pairs:
        return None
    wins = sum(g > p and not same(g, p) for g, p in pairs)
    losses = sum(g < p and not same(g, p) for g, p in pairs)
    means = f"({pct(results.summary[kinds.GLOBAL][key])} vs {pct(results.summary[kinds.PERSONAL][key])})"
    if wins == len(pairs):
        return f"The global model beats every personal model on {label} {means}."
    if losses == len(pairs):
        return f"Every personal model beats the global model on {label} {means}."
    ties = len(pairs) - wins - losses
    if ties == len(pairs):
        return f"On {label} the global model ties every personal model {means}."
    return (f"On {label} the global model beats {wins} of {len(pairs)} personal models, "
            f"loses to {losses} and ties {ties} {means}.")


def change_words(delta: float, label: str) -> str:
    if same(delta, 0):
        return f"stay level on {label}"
    return f"{'gain' if delta > 0 else 'lose'} {points(delta)} points {label}"


def versus_zero_shot(summary: dict[str, Any], kind: str) -> str | None:
    mine, base = summary.get(kind), summary.get(kinds.ZERO_SHOT)
    if not mine or not base or not known(mine["id_accuracy"], mine["ood_accuracy"],
                                         base["id_accuracy"], base["ood_accuracy"]):
        return None
    d_id = mine["id_accuracy"] - base["id_accuracy"]
    d_ood = mine["ood_accuracy"] - base["ood_accuracy"]
    if same(d_id, 0) and same(d_ood, 0):
        return f"{kinds.LABELS[kind].capitalize()} models match zero-shot on ID and OOD."
    joint = "but" if d_id * d_ood < 0 else "and"
    return (f"Compared with zero-shot, {kinds.LABELS[kind]} models {change_words(d_id, 'ID')} "
            f"{joint} {change_words(d_ood, 'OOD')}.")


def mean_by_round(metrics: list[dict], key: str) -> dict[str, list[tuple[int, float]]]:
    """Per phase: (round, mean of `key` over the clients that logged it in that round)."""
    sums: dict[tuple[str, int], list[float]] = {}
    for m in metrics:
        if known(m.get(key)):
            sums.setdefault((m.get("phase", "train"), m["round"]), []).append(m[key])
    out: dict[str, list[tuple[int, float]]] = {}
    for (phase, rnd), vals in sorted(sums.items()):
        out.setdefault(phase, []).append((rnd, sum(vals) / len(vals)))
    return out


def loss_trend(metrics: list[dict]) -> list[str]:
    lines = []
    for phase, curve in mean_by_round(metrics, "task_loss").items():
        (r0, first), (r1, last) = curve[0], curve[-1]
        if r0 == r1:
            lines.append(f"The {phase} training loss was logged for one round only ({last:.3f}).")
            continue
        way = "went down" if last < first else "went up" if last > first else "stayed flat"
        lines.append(f"The {phase} training loss (mean over clients) {way} from {first:.3f} "
                     f"in round {r0} to {last:.3f} in round {r1}.")
    return lines


def rounds_trend(rounds: list[dict]) -> str | None:
    if len(rounds) < 2:
        return None
    first, last = rounds[0], rounds[-1]
    moves = [f"{kinds.LABELS.get(k, k)} {100 * (s['ood_accuracy'] - first['summary'][k]['ood_accuracy']):+.1f}"
             for k, s in last["summary"].items()
             if k in first["summary"] and known(s.get("ood_accuracy"), first["summary"][k].get("ood_accuracy"))]
    if not moves:
        return None
    return f"OOD accuracy from round {first['round']} to round {last['round']}: {', '.join(moves)} points."


def run_findings(results: Results, metrics: list[dict]) -> list[str]:
    """Plain-words statements generated from the numbers, most telling first."""
    summary = results.summary
    found = [global_vs_personal(results, "ood_accuracy", "OOD"), global_vs_personal(results, "id_accuracy", "ID")]
    found += [versus_zero_shot(summary, k) for k in (kinds.PERSONAL, kinds.MIXED, kinds.GLOBAL)]
    found += [best_kind_sentence(summary, "id_accuracy", "ID"), best_kind_sentence(summary, "ood_accuracy", "OOD")]
    found.append(rounds_trend(results.rounds))
    found += loss_trend(metrics)
    if results.failures:
        found.append(f"{len(results.failures)} failure(s) were recorded; see Failures below.")
    return [f for f in found if f]
