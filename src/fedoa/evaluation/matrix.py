"""ID/OOD evaluation: which test sets each client's models meet, and the accuracy matrices.

An :class:`EvalPlan` names test sets and, per client, its in-distribution (ID) set and its
out-of-distribution (OOD) sets. The default plan: a client's own test data is ID, every other
client's is OOD. Protocols (e.g. a held-out category) build other plans; test sets need not
belong to any client.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fedoa.config import EvalConfig
from fedoa.data.prompts import PromptEncoder
from fedoa.data.records import ClientData, Record
from fedoa.evaluation.scoring import (
    PreparedSet,
    accuracy_from_generations,
    accuracy_from_options,
    generations,
    option_predictions,
    prepare_set,
)
from fedoa.model.adapters import AdapterModel

Matrix = dict[str, dict[str, float]]  # client -> test set -> accuracy


@dataclass
class EvalPlan:
    sets: dict[str, list[Record]]
    id_set: dict[str, str]
    ood_sets: dict[str, list[str]]
    protocol: str = "natural"
    description: str = "ID: the client's own test data; OOD: every other client's test data."

    def sets_of(self, client: str) -> list[str]:
        return [self.id_set[client], *self.ood_sets.get(client, [])]

    @property
    def clients(self) -> list[str]:
        return list(self.id_set)


def default_plan(clients: list[ClientData], ood: bool = True) -> EvalPlan:
    names = [c.name for c in clients]
    return EvalPlan(
        sets={c.name: c.test for c in clients},
        id_set={n: n for n in names},
        ood_sets={n: [m for m in names if m != n] if ood else [] for n in names},
    )


@dataclass
class SetScores:
    options: float = math.nan
    generation: float = math.nan


@dataclass
class Evaluator:
    """Scores the currently active model of an :class:`AdapterModel` on prepared test sets."""

    am: AdapterModel
    encoder: PromptEncoder
    cfg: EvalConfig
    pad_id: int
    eos_id: int
    prepared: dict[str, PreparedSet] = field(default_factory=dict)
    seconds: float = 0.0
    examples: int = 0

    def prepare(self, plan: EvalPlan) -> None:
        for name, records in plan.sets.items():
            if name not in self.prepared:
                self.prepared[name] = prepare_set(self.encoder, name, records)

    def score(self, set_name: str) -> SetScores:
        start = time.perf_counter()
        ps = self.prepared[set_name]
        out = SetScores()
        if self.cfg.metric in ("options", "both"):
            preds = option_predictions(self.am, ps, self.cfg.batch_size, self.pad_id)
            out.options = accuracy_from_options(ps, preds)
        if self.cfg.metric in ("generation", "both"):
            ids = generations(self.am, ps, self.cfg.batch_size, self.pad_id, self.cfg.max_new_tokens, self.eos_id)
            texts = self.encoder.tokenizer.batch_decode(ids, skip_special_tokens=True)
            out.generation = accuracy_from_generations(ps, texts)
        self.seconds += time.perf_counter() - start
        self.examples += len(ps)
        return out


def headline(scores: SetScores, metric: str) -> float:
    return scores.generation if metric == "generation" else scores.options


def evaluate_models(
    evaluator: Evaluator,
    plan: EvalPlan,
    kinds: list[str],
    identity: Callable[[str, str], str],
    activate: Callable[[str, str], None],
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, dict[str, SetScores]]]:
    """``kind -> client -> set -> scores``; a model shared by clients is evaluated once per set."""
    done: dict[tuple[str, str], SetScores] = {}
    out: dict[str, dict[str, dict[str, SetScores]]] = {}
    for kind in kinds:
        out[kind] = {}
        for client in plan.clients:
            ident = identity(kind, client)
            todo = [s for s in plan.sets_of(client) if (ident, s) not in done]
            if todo:
                activate(kind, client)
                for s in todo:
                    done[(ident, s)] = evaluator.score(s)
                    if progress:
                        progress(len(evaluator.prepared[s]))
            out[kind][client] = {s: done[(ident, s)] for s in plan.sets_of(client)}
    return out


def matrices(scores: dict[str, dict[str, dict[str, SetScores]]], metric: str) -> dict[str, Matrix]:
    return {
        kind: {c: {s: headline(v, metric) for s, v in row.items()} for c, row in by_client.items()}
        for kind, by_client in scores.items()
    }


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def summarize(matrix: Matrix, plan: EvalPlan) -> dict[str, float]:
    """Mean over clients of the ID accuracy and of each client's mean OOD accuracy."""
    id_acc = [matrix[c][plan.id_set[c]] for c in plan.clients]
    ood_acc = [_mean([matrix[c][s] for s in plan.ood_sets.get(c, [])]) for c in plan.clients]
    return {"id_accuracy": _mean(id_acc), "ood_accuracy": _mean(ood_acc)}


def per_client(matrix: Matrix, plan: EvalPlan) -> dict[str, dict[str, float]]:
    return {
        c: {
            "id_accuracy": matrix[c][plan.id_set[c]],
            "ood_accuracy": _mean([matrix[c][s] for s in plan.ood_sets.get(c, [])]),
        }
        for c in plan.clients
    }
