"""``results.json``: the outcome of a run, typed, shared by every runtime and every report.

:class:`Results` is what a run returns and writes; :meth:`Results.load` reads a finished run's
file back (also files of older fedoa versions: keys added since are optional).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fedoa.config import RunConfig
from fedoa.evaluation.matrix import (
    EvalPlan,
    SetScores,
    matrices,
    per_client,
    records,
    rouge_matrices,
    summarize,
)
from fedoa.evaluation.rouge import ROUGE_TYPES
from fedoa.io import write_json

Table = dict[str, dict[str, float | None]]  # client or kind -> key -> accuracy


class Results(BaseModel):
    """Accuracies are in [0, 1]; None where a value could not be measured."""

    model_config = ConfigDict(extra="allow")  # runtime- and feature-specific entries (deployment, dp ...)

    method: str
    protocol: dict[str, Any]
    metric: dict[str, str]
    clients: list[str]
    test_sets: dict[str, int]
    id_set: dict[str, str]
    ood_sets: dict[str, list[str]]
    ood_groups: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    set_categories: dict[str, str] = Field(default_factory=dict)
    #: kind -> {id_accuracy, ood_accuracy, ood_<group>_accuracy}
    summary: Table
    #: kind -> client -> {id_accuracy, ood_accuracy, ...}
    per_client: dict[str, Table]
    #: kind -> client -> test set -> accuracy
    matrices: dict[str, Table]
    #: kind -> client -> test set -> one character per record: '1' right, '0' wrong, '-' not scored
    records: dict[str, dict[str, dict[str, str]]] = Field(default_factory=dict)
    communication: dict[str, Any]
    timing: dict[str, float]
    config: dict[str, Any]
    generation: dict[str, Any] | None = None
    #: ``eval.rouge``: the reference's generation scoring (see :func:`rouge_results`)
    rouge: dict[str, Any] | None = None
    failures: list[str] = Field(default_factory=list)
    #: per evaluated round: {round, summary, per_client} (eval.every)
    rounds: list[dict[str, Any]] = Field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Results":
        import json

        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


def clean(x: Any) -> Any:
    """NaN -> None, so the file is strict JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [clean(v) for v in x]
    return x


def build_results(
    cfg: RunConfig,
    plan: EvalPlan,
    scores: dict[str, dict[str, dict[str, SetScores]]],
    communication: dict[str, Any],
    timing: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> Results:
    metric = "generation" if cfg.eval.metric == "generation" else "options"
    mats = matrices(scores, metric)
    values: dict[str, Any] = {
        "method": cfg.method,
        "protocol": {"name": plan.protocol, "description": plan.description, **plan.details},
        "metric": {
            "headline": metric,
            "description": "option scoring: the option with the highest log-likelihood"
            if metric == "options" else "greedy generation, exact match after normalization",
        },
        "clients": plan.clients,
        "test_sets": {name: len(recs) for name, recs in plan.sets.items()},
        "id_set": plan.id_set,
        "ood_sets": plan.ood_sets,
        "ood_groups": plan.ood_groups,
        "set_categories": {name: plan.set_category(name) for name in plan.sets},
        "summary": {kind: summarize(m, plan) for kind, m in mats.items()},
        "per_client": {kind: per_client(m, plan) for kind, m in mats.items()},
        "matrices": mats,
        "records": records(scores, metric),
        "communication": communication,
        "timing": timing,
        "config": cfg.to_dict(),
    }
    if cfg.eval.metric == "both":
        gen = matrices(scores, "generation")
        values["generation"] = {"summary": {kind: summarize(m, plan) for kind, m in gen.items()}, "matrices": gen}
    if cfg.eval.rouge:
        values["rouge"] = rouge_results(cfg, plan, scores)
    return Results.model_validate(clean({**values, **(extra or {})}))


def rouge_results(cfg: RunConfig, plan: EvalPlan, scores: dict[str, dict[str, dict[str, SetScores]]]) -> dict[str, Any]:
    """The ``rouge`` entry: per ROUGE type the summary (``id_rouge``, ``ood_rouge``, ...) and the matrices
    (mean F-measure in [0, 1]); ``records``: type -> kind -> client -> set -> each record's F-measure."""
    out: dict[str, Any] = {
        "description": "the FedOA reference's scoring: beam search, the answer against the record's output by ROUGE "
                       "F-measure (rouge-score), mean over records",
        "decoding": {"num_beams": cfg.eval.rouge_num_beams, "max_new_tokens": cfg.eval.rouge_max_new_tokens,
                     "do_sample": False},
        "shown": cfg.eval.rouge_type, "summary": {}, "matrices": {}, "records": {},
    }
    for t in ROUGE_TYPES:
        mats = rouge_matrices(scores, t)
        out["summary"][t] = {kind: {k.replace("accuracy", "rouge"): v for k, v in summarize(m, plan).items()}
                             for kind, m in mats.items()}
        out["matrices"][t] = mats
        out["records"][t] = {kind: {c: {s: [round(x, 5) for x in v.rouge.get(t, [])] for s, v in row.items()}
                                    for c, row in by_client.items()} for kind, by_client in scores.items()}
    return out
