"""Statistics of a comparison: the table of mean ± std over seeds, and paired differences.

The table: per method, model kind and group (ID, headline OOD, other OOD groups), the accuracy
per *category* = mean over the (client model, test set) pairs of the group whose test set
belongs to that category; with held-out rotation, a seed's value is the mean over the rotations
that have such pairs. *Average* = mean over the categories (as in the paper's table). Cells hold
mean and sample standard deviation (n-1) over seeds.

Paired differences: two models compared on the *same* test records give paired outcomes
(1 = correct, 0 = wrong). :func:`paired_difference` asks whether model A's accuracy differs
from model B's:

- the unit that was sampled is a *test record*. One record can be scored many times: by every
  client's model (a held-out or shared OOD set), in every held-out rotation, under every seed. Those
  scores are not independent (an easy record is easy for all of them), so the bootstrap resamples
  whole records, each carrying every (client model, rotation, seed) outcome pair that scored it,
  never the (client, record) pairs one by one (which would count one record as six);
- a record's difference is A's outcome minus B's, averaged over its observations and seeds; a
  category's difference is the mean over its records; the average gives every category the same
  weight (as the paper's table does), and records are resampled within their category (each
  category's test sets have a fixed size by design);
- the 95% interval is the percentile interval of :func:`scipy.stats.bootstrap` with one sample per
  category (``paired=False``: each category resampled on its own). What it cannot see is a seed
  effect shared by all records; the per-seed differences are reported beside it for that reason;
- a category where every compared model gives the same outcome on every record
  (:func:`uninformative_categories`, e.g. every model answers "positive" on every sentiment record)
  cannot tell any two models apart: it is shown, marked, and kept out of every average.

A difference is *distinguishable from zero* when its interval excludes 0.
"""
from __future__ import annotations

import math
import statistics as pystats
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedoa import kinds

if TYPE_CHECKING:
    from fedoa.reports.results import Results

#: Label of the mean over categories, shared by statistics and rendering.
AVERAGE = "average"
CONFIDENCE = 0.95
RESAMPLES = 4000

METHOD_KINDS = (kinds.PERSONAL, kinds.MIXED, kinds.GLOBAL)
OOD_LABELS = {
    "natural": "every other client's test data",
    "within-category": "the sibling task of the same category",
    "leave-category-out": "the held-out category (rotated)",
}
GROUP_LABELS = {"all": "every other task", "sibling": "the sibling task of the same category"}



def seed_stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n-1) over seeds."""
    values = [float(v) for v in values]
    return {
        "mean": pystats.fmean(values) if values else None,
        "std": pystats.stdev(values) if len(values) >= 2 else None,
        "n": len(values),
        "values": values,
    }


def _record_means(diff: np.ndarray, labels: list) -> tuple[list, np.ndarray]:
    """Distinct labels (in first-seen order) and the mean of ``diff`` over each label's entries."""
    index: dict = {}
    ids = np.array([index.setdefault(x, len(index)) for x in labels], dtype=int)
    means = np.bincount(ids, weights=diff, minlength=len(index)) / np.bincount(ids, minlength=len(index))
    return list(index), means


def _stratified_mean(per_record: np.ndarray, strata: list) -> float:
    """Mean over strata of the mean over each stratum's records (``strata``: one per record)."""
    _, means = _record_means(per_record, strata)
    return float(np.mean(means))


def paired_difference(
    a: np.ndarray, b: np.ndarray, records: Sequence | None = None, strata: Sequence | None = None, seed: int = 0,
    resamples: int = RESAMPLES,
) -> dict[str, Any]:
    """Mean of ``a - b`` with a bootstrap interval that resamples whole test records.

    ``a`` and ``b`` have shape ``[seeds, observations]``: outcomes of the same observations under the
    same seeds. ``records`` names the test record each observation scored (several observations of one
    record, e.g. one per client model, move together; default: each observation its own record);
    ``strata`` its category (each category weighs the same and is resampled on its own; default: one).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"paired outcomes must share a [seeds, observations] shape, got {a.shape} and {b.shape}")
    n = a.shape[1]
    records = list(range(n)) if records is None else list(records)
    strata = [""] * n if strata is None else list(strata)
    if len(records) != n or len(strata) != n:
        raise ValueError(f"need one record and one stratum per observation ({n})")
    diff = a - b  # [seeds, observations]
    labels = list(zip(strata, records))  # a record belongs to one category
    keys, per_record = _record_means(diff.mean(axis=0), labels)
    record_strata = [st for st, _ in keys]
    point = _stratified_mean(per_record, record_strata)
    per_seed = [_stratified_mean(_record_means(d, labels)[1], record_strata) for d in diff]
    out: dict[str, Any] = {
        "difference": point, "per_seed": per_seed, "records": len(keys), "observations": n,
        "seeds": int(diff.shape[0]), "confidence": CONFIDENCE,
    }
    samples = [per_record[[i for i, st in enumerate(record_strata) if st == name]]
               for name in dict.fromkeys(record_strata)]  # one sample per category
    low = high = point
    varying = [x for x in samples if np.ptp(x) > 0]
    if varying:  # a stratum without variation (or with one record) adds a constant: leave it out of the draw
        from scipy.stats import bootstrap

        fixed = sum(float(np.mean(x)) for x in samples if np.ptp(x) == 0)
        k = len(samples)

        def statistic(*xs: np.ndarray, axis: int = -1) -> np.ndarray:
            return (np.sum([np.mean(x, axis=axis) for x in xs], axis=0) + fixed) / k

        res = bootstrap(tuple(varying), statistic, paired=False, vectorized=True, n_resamples=resamples,
                        confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    out["low"], out["high"] = low, high
    out["distinguishable"] = bool(low > 0 or high < 0)
    out["verdict"] = verdict(point, low, high)
    return out


def verdict(point: float, low: float, high: float) -> str:
    """The difference in words."""
    if math.isnan(point):
        return "not measured"
    if low > 0:
        return "ahead (interval above 0)"
    if high < 0:
        return "behind (interval below 0)"
    return "within noise (interval contains 0)"


# ----------------------------------------------------------------------------- the table


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else None


def groups_of(results: Results) -> dict[str, dict[str, list[str]]]:
    """group -> client -> test sets: ``id``, ``ood`` (headline) and ``ood_<g>`` for each extra
    group that differs from the headline one."""
    out = {
        "id": {c: [s] for c, s in results.id_set.items()},
        "ood": {c: list(v) for c, v in results.ood_sets.items()},
    }
    for g, sets in results.ood_groups.items():
        if sets != results.ood_sets:
            out[f"ood_{g}"] = sets
    return out


def run_categories(results: Results) -> dict[str, dict[str, dict[str, float]]]:
    """kind -> group -> category -> mean accuracy over the group's (client, test set) pairs
    whose test set is of that category. Categories without pairs are absent."""
    cats = results.set_categories or {s: s for s in results.test_sets}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for kind, matrix in results.matrices.items():
        out[kind] = {}
        for group, sets in groups_of(results).items():
            pairs: dict[str, list[float]] = {}
            for client, names in sets.items():
                for s in names:
                    pairs.setdefault(cats[s], []).append(matrix[client].get(s))
            values = {c: _mean(v) for c, v in pairs.items()}
            out[kind][group] = {c: v for c, v in values.items() if v is not None}
    return out


def aggregate(
    runs: list[tuple[str, int, str, Results]], methods: list[str], seeds: list[int], find_uninformative: bool = True
) -> dict[str, Any]:
    """The comparison table from finished runs ``(method, seed, holdout, results)``.

    Per method, kind, group and seed: per category, the mean over the seed's runs (rotations)
    that have that category; the seed's average is the mean of its informative categories, taken
    only when the seed covers every informative category the group has (an average over fewer
    categories, e.g. while held-out rotations are pending, would not compare with the other rows).
    Then mean and sample standard deviation over seeds. The zero-shot model is the same in every
    run; its row pools all runs. ``find_uninformative``: keep the categories where every model gives
    the same outcome on every record (:func:`uninformative_categories`) out of the average.
    """
    per_seed: dict[tuple[str, str], dict[int, list[dict]]] = {}
    first = None
    for method, seed, holdout, results in runs:
        first = first or results
        cats = run_categories(results)
        for kind, groups in cats.items():
            owner = "zero_shot" if kind == "zero_shot" else method
            per_seed.setdefault((owner, kind), {}).setdefault(seed, []).append(groups)
    categories: list[str] = sorted(
        {c for by_seed in per_seed.values() for rs in by_seed.values() for g in rs for v in g.values() for c in v}
    )
    group_names: list[str] = []
    for _, _, _, results in runs:
        group_names += [g for g in groups_of(results) if g not in group_names]
    order = ["ood"] + [g for g in group_names if g.startswith("ood_")] + ["id"]
    group_names = [g for g in order if g in group_names]

    group_categories = {  # the categories each group has in any row, in the order of ``categories``
        g: [c for c in categories
            if any(c in r.get(g, {}) for by_seed in per_seed.values() for rs in by_seed.values() for r in rs)]
        for g in group_names
    }

    uninformative = uninformative_categories(collect_outcomes(runs), group_categories) if find_uninformative else {}

    def cell_stats(by_seed: dict[int, list[dict]], group: str) -> dict[str, dict[str, Any]]:
        counted = [c for c in group_categories[group] if c not in uninformative.get(group, [])]
        seed_values: dict[str, list[float]] = {c: [] for c in categories + [AVERAGE]}
        for seed in sorted(by_seed):
            rots = by_seed[seed]
            cat_vals = {}
            for c in categories:
                v = _mean([r.get(group, {}).get(c) for r in rots])
                if v is not None:
                    cat_vals[c] = v
                    seed_values[c].append(v)
            if counted and all(c in cat_vals for c in counted):
                seed_values[AVERAGE].append(pystats.fmean(cat_vals[c] for c in counted))
        return {c: seed_stats(v) for c, v in seed_values.items()}

    table: dict[str, dict[str, dict[str, Any]]] = {}
    for group in group_names:
        table[group] = {}
        for method in methods:
            table[group][method] = {}
            for kind in METHOD_KINDS:
                by_seed = per_seed.get((method, kind))
                table[group][method][kind] = cell_stats(by_seed, group) if by_seed else None
        zs = per_seed.get(("zero_shot", "zero_shot"))
        table[group]["zero_shot"] = {"zero_shot": cell_stats(zs, group) if zs else None}

    from fedoa.evaluation.protocols import DESCRIPTIONS

    protocol = {}
    if first:
        name = first.protocol["name"]
        protocol = {"name": name, "description": DESCRIPTIONS.get(name, first.protocol["description"])}
    return {
        "protocol": protocol,
        "metric": first.metric if first else {},
        "methods": methods,
        "seeds": seeds,
        "categories": categories,
        "groups": group_names,
        "group_categories": group_categories,
        "uninformative": uninformative,
        "group_labels": {g: group_label(g, protocol.get("name", "")) for g in group_names},
        "table": table,
        "config": first.config if first else None,
    }


def group_label(group: str, protocol: str) -> str:
    if group == "id":
        return "ID: the client's own test data"
    if group == "ood":
        return f"OOD (headline): {OOD_LABELS.get(protocol, 'out-of-distribution test data')}"
    name = group[4:]
    return f"OOD, {GROUP_LABELS.get(name, name)}"


# ----------------------------------------------------------------------------- paired differences

Row = tuple[str, str]  # (method label, model kind); ("zero_shot", "zero_shot") for the base model
ObsKey = tuple[str, str, str, int]  # (held-out category, client, test set, record index)


def run_outcomes(results: Results, holdout: str = "") -> dict[str, dict[str, dict[str, dict[ObsKey, int]]]]:
    """kind -> group -> category -> {observation: outcome} of one run (records with outcomes only)."""
    cats = results.set_categories or {s: s for s in results.test_sets}
    out: dict[str, dict[str, dict[str, dict[ObsKey, int]]]] = {}
    for kind, by_client in results.records.items():
        per_group = out.setdefault(kind, {})
        for group, sets in groups_of(results).items():
            per_cat = per_group.setdefault(group, {})
            for client, names in sets.items():
                for s in names:
                    hits = by_client.get(client, {}).get(s, "")
                    obs = per_cat.setdefault(cats[s], {})
                    for i, h in enumerate(hits):
                        if h in "01":
                            obs[(holdout, client, s, i)] = int(h)
    return out


def collect_outcomes(runs: list[tuple[str, int, str, Results]]) -> dict[Row, dict[int, dict]]:
    """row -> seed -> group -> category -> {observation: outcome}, over the runs of a comparison."""
    rows: dict[Row, dict[int, dict]] = {}
    for label, seed, holdout, results in runs:
        for kind, groups in run_outcomes(results, holdout).items():
            row = (kinds.ZERO_SHOT, kinds.ZERO_SHOT) if kind == kinds.ZERO_SHOT else (label, kind)
            by_seed = rows.setdefault(row, {}).setdefault(seed, {})
            for group, cats in groups.items():
                for cat, obs in cats.items():
                    by_seed.setdefault(group, {}).setdefault(cat, {}).update(obs)
    return rows


def record_of(obs: tuple) -> tuple:
    """The test record an observation scored: (test set, record index), whoever scored it in whichever
    rotation (observations are ``(held-out category, client, test set, index)``)."""
    return tuple(obs[-2:])


def _aligned(
    a: dict[int, dict], b: dict[int, dict], group: str, cat: str
) -> tuple[np.ndarray, np.ndarray, list] | None:
    """``[seeds, observations]`` outcomes of two rows on the observations both have under every common
    seed, and those observations."""
    seeds = sorted(s for s in a if s in b)
    if not seeds:
        return None
    keys = None
    for s in seeds:
        for side in (a, b):
            have = set(side[s].get(group, {}).get(cat, {}))
            keys = have if keys is None else keys & have
    if not keys:
        return None
    keys = sorted(keys)
    return (
        np.array([[a[s][group][cat][k] for k in keys] for s in seeds], dtype=float),
        np.array([[b[s][group][cat][k] for k in keys] for s in seeds], dtype=float),
        keys,
    )


def compare_rows(
    a: dict[int, dict], b: dict[int, dict], group: str, categories: list[str], uninformative: Sequence[str] = ()
) -> dict[str, Any]:
    """Paired difference a - b per category and on the category average: each informative category
    weighs the same, and the average is taken only when both rows have every one of them (as in
    :func:`aggregate`). A category in ``uninformative`` keeps its cell, marked, out of the average."""
    out: dict[str, Any] = {}
    parts = []
    for cat in categories:
        pair = _aligned(a, b, group, cat)
        if pair is None:
            continue
        xa, xb, keys = pair
        out[cat] = paired_difference(xa, xb, [record_of(k) for k in keys])
        if cat in uninformative:
            out[cat]["uninformative"] = True
        else:
            parts.append((cat, *pair))
    counted = [c for c in categories if c not in uninformative]
    if parts and len(parts) == len(counted) and len({p[1].shape[0] for p in parts}) == 1:
        out[AVERAGE] = paired_difference(
            np.concatenate([p[1] for p in parts], axis=1), np.concatenate([p[2] for p in parts], axis=1),
            [record_of(k) for p in parts for k in p[3]], [p[0] for p in parts for _ in p[3]],
        )
    return out


def uninformative_categories(rows: dict[Row, dict[int, dict]], group_categories: dict[str, list[str]]) -> dict[str, list[str]]:
    """group -> its categories where every compared model (every row, seed, client model and rotation that
    scored a record) gives the same outcome on every record: such a category cannot tell any two models
    apart, so it is shown but kept out of the averages. Needs at least two rows that scored it."""
    out: dict[str, list[str]] = {}
    for group, categories in group_categories.items():
        for cat in categories:
            seen: dict[tuple, int] = {}
            scored_by, agree = 0, True
            for by_seed in rows.values():
                outcomes = [by_seed[s].get(group, {}).get(cat, {}) for s in by_seed]
                scored_by += any(outcomes)
                for obs in outcomes:
                    for key, hit in obs.items():
                        if seen.setdefault(record_of(key), hit) != hit:
                            agree = False
                            break
                    if not agree:
                        break
                if not agree:
                    break
            if agree and scored_by >= 2:
                out.setdefault(group, []).append(cat)
    return out


def paired_table(
    runs: list[tuple[str, int, str, Results]], focus: list[str], group_categories: dict[str, list[str]],
    uninformative: dict[str, list[str]] | None = None,
) -> list[dict[str, Any]]:
    """Every focus row (its personal and mixed models) against every other row, per group
    (``group_categories``: each group's categories, as :func:`aggregate` found them; ``uninformative``:
    the categories each group keeps out of its averages).

    A row whose outcomes repeat an earlier row's exactly (the global adapter that FedIT and every
    two-adapter method share) is compared once, under the first row's name.
    """
    rows = collect_outcomes(runs)
    uninformative = uninformative or {}
    distinct: list[Row] = []
    for r in rows:
        if not any(rows[d] == rows[r] for d in distinct):
            distinct.append(r)
    out = []
    for f in [r for r in rows if r[0] in focus and r[1] in (kinds.PERSONAL, kinds.MIXED)]:
        for other in distinct:
            if other == f:
                continue
            for group, categories in group_categories.items():
                cells = compare_rows(rows[f], rows[other], group, categories, uninformative.get(group, ()))
                if cells:
                    out.append({"a": list(f), "b": list(other), "group": group, "cells": cells})
    return out


def rouge_summary(runs: list[tuple[str, int, str, Results]], methods: list[str], seeds: list[int]) -> dict | None:
    """The ROUGE table of the runs that scored it (``eval.rouge``: the reference's generation scoring),
    or None when none did: the same table as the accuracy's, of mean ROUGE F-measure. No paired
    intervals: ROUGE is a secondary metric here, option accuracy stays the headline."""
    scored = [(m, s, h, r) for m, s, h, r in runs if r.rouge]
    if not scored:
        return None
    first = scored[0][3].rouge
    shown = first["shown"]
    swapped = [(m, s, h, r.model_copy(update={"matrices": r.rouge["matrices"][shown]})) for m, s, h, r in scored]
    table = aggregate(swapped, methods, seeds, find_uninformative=False)  # ROUGE can differ where accuracy cannot
    keep = ("methods", "seeds", "categories", "groups", "group_labels", "table")
    return {"type": shown, "decoding": first.get("decoding", {}), "runs": len(scored), **{k: table[k] for k in keep}}
