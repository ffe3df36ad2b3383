"""``results.json``: the machine-readable outcome of a run, shared by every runtime."""
from __future__ import annotations

import math
from typing import Any

from fedoa.config import RunConfig
from fedoa.evaluation.matrix import (
    EvalPlan,
    SetScores,
    matrices,
    per_client,
    records,
    summarize,
)


def _clean(x: Any) -> Any:
    """NaN -> None, so the file is strict JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def build_results(
    cfg: RunConfig,
    plan: EvalPlan,
    scores: dict[str, dict[str, dict[str, SetScores]]],
    communication: dict[str, Any],
    timing: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    metric = "generation" if cfg.eval.metric == "generation" else "options"
    mats = matrices(scores, metric)
    results: dict[str, Any] = {
        "method": cfg.method,
        "protocol": {"name": plan.protocol, "description": plan.description, **plan.details},
        "metric": {
            "headline": metric,
            "description": "option scoring: the option with the highest log-likelihood"
            if metric == "options"
            else "greedy generation, exact match after normalization",
        },
        "clients": plan.clients,
        "test_sets": {name: len(records) for name, records in plan.sets.items()},
        "id_set": plan.id_set,
        "ood_sets": plan.ood_sets,
        "ood_groups": plan.ood_groups,
        "set_categories": {name: plan.set_category(name) for name in plan.sets},
        "summary": {kind: summarize(m, plan) for kind, m in mats.items()},
        "per_client": {kind: per_client(m, plan) for kind, m in mats.items()},
        "matrices": mats,
        # per record of each (model, test set): '1' right, '0' wrong, '-' not scored (paired statistics)
        "records": records(scores, metric),
        "communication": communication,
        "timing": timing,
        "config": cfg.to_dict(),
    }
    if cfg.eval.metric == "both":
        gen = matrices(scores, "generation")
        results["generation"] = {
            "summary": {kind: summarize(m, plan) for kind, m in gen.items()},
            "matrices": gen,
        }
    if extra:
        results.update(extra)
    return _clean(results)
