"""ID/OOD evaluation: which test sets each client's models meet, and the accuracy matrices.

An :class:`EvalPlan` names test sets and, per client, its in-distribution (ID) set and its
out-of-distribution (OOD) sets. The default plan: a client's own test data is ID, every other
client's is OOD. Protocols (e.g. a held-out category) build other plans; test sets need not
belong to any client.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fedoa.config import EvalConfig
from fedoa.data.prompts import PromptEncoder
from fedoa.data.records import ClientData, Record
from fedoa.evaluation.rouge import answer_of, rouge_per_record
from fedoa.evaluation.scoring import (
    PreparedSet,
    accuracy_of,
    generation_hits,
    generations,
    option_hits,
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
    #: Extra named OOD groups (group -> client -> sets), summarized as ``ood_<group>_accuracy``
    #: beside the headline ``ood_accuracy`` (which always comes from ``ood_sets``).
    ood_groups: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    #: Protocol parameters written into results.json (e.g. the held-out category).
    details: dict[str, Any] = field(default_factory=dict)
    #: Only the first ``limit`` records of every set are scored (0: all); see :meth:`limited`.
    limit: int = 0

    def sets_of(self, client: str) -> list[str]:
        out = [self.id_set[client], *self.ood_sets.get(client, [])]
        for group in self.ood_groups.values():
            out += [s for s in group.get(client, []) if s not in out]
        return out

    @property
    def clients(self) -> list[str]:
        return list(self.id_set)

    def headline_only(self) -> "EvalPlan":
        """The plan without OOD groups beyond the headline one, and without the test sets only
        they used: fewer models x sets to score when a table needs ID and headline OOD only."""
        groups = {g: v for g, v in self.ood_groups.items() if v == self.ood_sets}
        plan = dataclasses.replace(self, ood_groups=groups)
        used = {s for c in plan.clients for s in plan.sets_of(c)}
        return dataclasses.replace(plan, sets={s: r for s, r in self.sets.items() if s in used})

    def limited(self, n: int) -> "EvalPlan":
        """ID and headline OOD sets cut to their first ``n`` records: a cheap look between rounds."""
        plan = self.headline_only()
        return dataclasses.replace(plan, sets={s: r[:n] for s, r in plan.sets.items()}, limit=n)

    def only(self, clients: list[str]) -> "EvalPlan":
        """The plan for these clients only (e.g. the ones whose models could be evaluated)."""
        return dataclasses.replace(
            self, id_set={c: self.id_set[c] for c in clients}, ood_sets={c: self.ood_sets.get(c, []) for c in clients},
            ood_groups={g: {c: v.get(c, []) for c in clients} for g, v in self.ood_groups.items()})

    def set_category(self, name: str) -> str:
        """The category of a test set's records (their task when uncategorized; 'mixed')."""
        cats = {r.category or r.task for r in self.sets[name]}
        return cats.pop() if len(cats) == 1 else ("mixed" if cats else "")


def default_plan(clients: list[ClientData], ood: bool = True) -> EvalPlan:
    names = [c.name for c in clients]
    return EvalPlan(
        sets={c.name: c.test for c in clients},
        id_set={n: n for n in names},
        ood_sets={n: [m for m in names if m != n] if ood else [] for n in names},
    )


@dataclass
class SetScores:
    """Accuracy of one model on one test set, and each record's outcome ('1' right, '0' wrong,
    '-' not scored) in the set's order: paired comparisons need the records, not only the mean."""

    options: float = math.nan
    generation: float = math.nan
    options_hits: str = ""
    generation_hits: str = ""
    #: ``eval.rouge``: per ROUGE type, each record's F-measure in [0, 1] (empty when not scored)
    rouge: dict[str, list[float]] = field(default_factory=dict)


def hits_text(hits: list[int]) -> str:
    return "".join("-" if h < 0 else str(h) for h in hits)


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
    #: Scores by (model fingerprint, test set content), shared by evaluators of the same base
    #: model (``fedoa compare``): a model met again (the zero-shot model, a global adapter two
    #: methods share) is scored once per distinct test set.
    cache: dict | None = None

    def prepare(self, plan: EvalPlan) -> None:
        for name, records in plan.sets.items():
            if name not in self.prepared:
                self.prepared[name] = prepare_set(self.encoder, name, records)

    def _set_key(self, ps: PreparedSet) -> tuple:
        """Everything a score depends on besides the model and tokenizer."""
        rouge = (self.cfg.rouge_num_beams, self.cfg.rouge_max_new_tokens) if self.cfg.rouge else None
        return (
            self.cfg.metric, self.cfg.max_new_tokens, rouge, tuple(ps.prompts),
            tuple(tuple(o) for o in ps.options), tuple(ps.answers), tuple(r.output for r in ps.records),
        )

    def _cache_key(self, set_name: str, fingerprint: str | None, limit: int | None) -> tuple | None:
        if self.cache is None or fingerprint is None:
            return None
        ps = self.prepared[set_name].head(limit)
        return (fingerprint, self._set_key(ps), self.cfg.rouge and limit is None)

    def cached(self, set_name: str, fingerprint: str | None = None, limit: int | None = None) -> SetScores | None:
        """The cached scores of the model named ``fingerprint`` on the set, or None."""
        key = self._cache_key(set_name, fingerprint, limit)
        return None if key is None or key not in self.cache else dataclasses.replace(self.cache[key])

    def generates(self, limit: int | None = None) -> bool:
        """Whether scoring the first ``limit`` records generates text (generation, ROUGE), which
        only the active model can do."""
        return self.cfg.metric != "options" or (self.cfg.rouge and limit is None)

    def score(self, set_name: str, fingerprint: str | None = None, limit: int | None = None,
              preds: list[int] | None = None) -> SetScores:
        """Scores of the active model on the set's first ``limit`` records (None: all);
        ``fingerprint`` names the model's content (None: not cached); ``preds``: its option
        predictions, already computed (batched evaluation), so only generation needs the model."""
        ps = self.prepared[set_name].head(limit)
        rouge = self.cfg.rouge and limit is None  # not in the looks between rounds
        key = self._cache_key(set_name, fingerprint, limit)
        if key is None:
            return self._score(ps, rouge, preds)
        if key not in self.cache:
            self.cache[key] = self._score(ps, rouge, preds)
        return dataclasses.replace(self.cache[key])

    def _score(self, ps: PreparedSet, rouge: bool = False, preds: list[int] | None = None) -> SetScores:
        start = time.perf_counter()
        out = SetScores()
        if self.cfg.metric in ("options", "both"):
            if preds is None:
                preds = option_predictions(self.am, ps, self.cfg.batch_size, self.pad_id)
            hits = option_hits(ps, preds)
            out.options, out.options_hits = accuracy_of(hits), hits_text(hits)
        if self.cfg.metric in ("generation", "both"):
            ids = generations(self.am, ps, self.cfg.batch_size, self.pad_id, self.cfg.max_new_tokens, self.eos_id)
            texts = self.encoder.tokenizer.batch_decode(ids, skip_special_tokens=True)
            hits = generation_hits(ps, texts)
            out.generation, out.generation_hits = accuracy_of(hits), hits_text(hits)
        if rouge:
            ids = generations(self.am, ps, self.cfg.batch_size, self.pad_id, self.cfg.rouge_max_new_tokens,
                              self.eos_id, self.cfg.rouge_num_beams)
            decode = partial(self.encoder.tokenizer.decode, skip_special_tokens=True)
            answers = [answer_of(row, self.eos_id, decode) for row in ids]
            out.rouge = rouge_per_record(answers, [r.output for r in ps.records])
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
    activate: Callable[[str, str], str | None],
    progress: Callable[[int], None] | None = None,
    only: set[tuple[str, str]] | None = None,
) -> dict[str, dict[str, dict[str, SetScores]]]:
    """``kind -> client -> set -> scores``; a model shared by clients is evaluated once per set.

    ``activate(kind, client)`` makes the model current and returns its fingerprint (a name of
    its content, for the evaluator's cache) or None. ``only``: the (kind, set) pairs to score
    (None: every kind on every set of its client; a Flower node scores the shared models on its
    own set only).
    """
    done: dict[tuple[str, str], SetScores] = {}
    out: dict[str, dict[str, dict[str, SetScores]]] = {}
    for kind in kinds:
        out[kind] = {}
        for client in plan.clients:
            ident = identity(kind, client)
            wanted = [s for s in plan.sets_of(client) if only is None or (kind, s) in only]
            todo = [s for s in wanted if (ident, s) not in done]
            if todo:
                fingerprint = activate(kind, client)
                for s in todo:
                    done[(ident, s)] = evaluator.score(s, fingerprint, plan.limit or None)
                    if progress:
                        progress(len(evaluator.prepared[s].head(plan.limit or None)))
            out[kind][client] = {s: done[(ident, s)] for s in wanted}
    return out


def records(scores: dict[str, dict[str, dict[str, SetScores]]], metric: str) -> dict[str, dict[str, dict[str, str]]]:
    """``kind -> client -> set -> per-record outcomes`` of the headline metric."""
    attr = "generation_hits" if metric == "generation" else "options_hits"
    return {kind: {c: {s: getattr(v, attr) for s, v in row.items()} for c, row in by_client.items()}
            for kind, by_client in scores.items()}


def rouge_matrices(scores: dict[str, dict[str, dict[str, SetScores]]], rouge_type: str) -> dict[str, Matrix]:
    """``kind -> client -> set -> mean F-measure`` of one ROUGE type (NaN where not scored)."""
    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else math.nan

    return {kind: {c: {s: mean(v.rouge.get(rouge_type, [])) for s, v in row.items()} for c, row in by_client.items()}
            for kind, by_client in scores.items()}


def matrices(scores: dict[str, dict[str, dict[str, SetScores]]], metric: str) -> dict[str, Matrix]:
    return {
        kind: {c: {s: headline(v, metric) for s, v in row.items()} for c, row in by_client.items()}
        for kind, by_client in scores.items()
    }


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def _client_row(matrix: Matrix, plan: EvalPlan, c: str) -> dict[str, float]:
    row = {
        "id_accuracy": matrix[c][plan.id_set[c]],
        "ood_accuracy": _mean([matrix[c][s] for s in plan.ood_sets.get(c, [])]),
    }
    for group, sets in plan.ood_groups.items():
        row[f"ood_{group}_accuracy"] = _mean([matrix[c][s] for s in sets.get(c, [])])
    return row


def summarize(matrix: Matrix, plan: EvalPlan) -> dict[str, float]:
    """Mean over clients of the ID accuracy and of each client's mean OOD accuracy (per group)."""
    rows = [_client_row(matrix, plan, c) for c in plan.clients]
    keys = list(rows[0]) if rows else ["id_accuracy", "ood_accuracy"]
    return {k: _mean([r[k] for r in rows]) for k in keys}


def per_client(matrix: Matrix, plan: EvalPlan) -> dict[str, dict[str, float]]:
    return {c: _client_row(matrix, plan, c) for c in plan.clients}
