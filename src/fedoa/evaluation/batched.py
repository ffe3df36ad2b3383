"""Batched evaluation: the models that meet a test set score each batch of its records in one pass.

With ``runtime.batch_clients`` on, the in-process runtime describes each model it evaluates as slot
adapters (``Algorithm.eval_model``: a client's personal adapter, the global one, a constant mix of
the two, the base model alone). They are stacked in one :class:`SlotBank`, and each batch of a test
set's records (the sequential path's batches: ``eval.batch_size`` records sorted by prompt length)
is scored by every model that meets the set at once: the pass's rows are the records repeated once
per model, each row routed to its model's slot (``model/slots.py``), in the prompt pass and in the
KV-cache continuation of multi-token options alike. A pass holds ``eval.batch_size`` x models
rows. Outcomes equal the sequential path's; option scores agree within float rounding.

Still scored one model at a time, the model activated as in the sequential path:
- models with no slot form (``eval_model`` None): FedOA's mixed model and FedDPA's instance-wise
  mix, whose per-row weights need each input's features under P alone and the client's training
  anchors (a pass of their own per client before scoring);
- generation and ROUGE (decoding through ``generate`` runs the active model only): with
  ``eval.metric = "both"`` or ``eval.rouge`` the options are batched and each model's
  generations then run alone; ``eval.metric = "generation"`` is wholly sequential.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from fedoa.evaluation.matrix import EvalPlan, Evaluator, SetScores, evaluate_models
from fedoa.evaluation.scoring import best_option, option_scores, scored_batches
from fedoa.model.adapters import AdapterModel, AdapterState
from fedoa.model.slots import Routing, SlotBank, SlotModel, routed

Scores = dict[str, dict[str, dict[str, SetScores]]]  # kind -> client -> set -> scores


def _zeros(am: AdapterModel) -> AdapterState:
    """A slot that adds nothing: the base model alone (zero LoRA matrices add exact zeros)."""
    return {k: torch.zeros(p.shape) for k, p in am.params[am.slots[0]].items()}


def _row_weights(values: list[float], rows: int, unit: float, device) -> torch.Tensor | None:
    """Per-row weights of models whose rows come in groups of ``rows`` (None: all ``unit``)."""
    if all(v == unit for v in values):
        return None
    return torch.tensor(values, dtype=torch.float32, device=device).repeat_interleave(rows)


@torch.no_grad()
def slot_option_scores(am: AdapterModel, bank: SlotBank, models: list[SlotModel], slots: list[int],
                       prompts: list[tuple[int, ...]], options: list[list[tuple[int, ...]]],
                       pad_id: int) -> list[list[list[float]]]:
    """``option_scores`` of one batch of records under each of ``models`` (in ``bank``'s
    ``slots``), all in one pass: ``[model][record][option]``."""
    n, device = len(prompts), am.device
    routing = Routing(torch.tensor(slots, device=device), n,
                      _row_weights([m.own_weight for m in models], n, 1.0, device),
                      _row_weights([m.fixed_weight for m in models], n, 0.0, device))

    def engage(rows: torch.Tensor | None):
        return routed(am, bank, routing if rows is None else routing.select(rows))

    flat = option_scores(am, prompts * len(models), options * len(models), pad_id, engage)
    return [flat[j * n : (j + 1) * n] for j in range(len(models))]


def batched_predictions(evaluator: Evaluator, models: dict[str, SlotModel], sets: dict[str, list[str]],
                        shared: AdapterState, limit: int | None) -> dict[str, dict[str, list[int]]]:
    """``model -> set -> option predictions`` of every model on the sets it meets (``sets``),
    each batch of a set's records scored by all its models in one pass."""
    start, am = time.perf_counter(), evaluator.am
    names = list(models)
    mixed = any(m.fixed_weight for m in models.values())
    bank = SlotBank(am, [_zeros(am) if m.own is None else m.own for m in models.values()], trainable=False,
                    fixed=shared if mixed else None)
    out: dict[str, dict[str, list[int]]] = {name: {} for name in names}
    for s in dict.fromkeys(s for name in names for s in sets[name]):
        meeting = [name for name in names if s in sets[name]]
        ps = evaluator.prepared[s].head(limit)
        preds = {name: [-1] * len(ps) for name in meeting}
        for idx in scored_batches(ps, evaluator.cfg.batch_size):
            scores = slot_option_scores(am, bank, [models[m] for m in meeting], [names.index(m) for m in meeting],
                                        [ps.prompts[i] for i in idx], [ps.options[i] for i in idx], evaluator.pad_id)
            for name, block in zip(meeting, scores):
                for i, sc in zip(idx, block):
                    preds[name][i] = best_option(sc)
        for name in meeting:
            out[name][s] = preds[name]
    evaluator.seconds += time.perf_counter() - start
    return out


def evaluate_batched(
    evaluator: Evaluator,
    plan: EvalPlan,
    kinds: list[str],
    identity: Callable[[str, str], str],
    describe: Callable[[str, str], tuple[SlotModel | None, str | None]],
    activate: Callable[[str, str], str | None],
    shared: AdapterState,
    progress: Callable[[int], None] | None = None,
) -> Scores:
    """What :func:`~fedoa.evaluation.matrix.evaluate_models` returns, the option scoring of every
    model with a slot form batched. ``describe(kind, client)``: the model as slots (None: it
    is scored alone) and its fingerprint; ``shared``: the adapter a mix adds to every row (G)."""
    if evaluator.cfg.metric == "generation":  # nothing to batch
        return evaluate_models(evaluator, plan, kinds, identity, activate, progress)
    limit = plan.limit or None
    first: dict[str, tuple[str, str]] = {}  # a model -> the first (kind, client) that names it
    sets: dict[str, list[str]] = {}  # a model -> the sets it meets
    for kind in kinds:
        for client in plan.clients:
            name = identity(kind, client)
            first.setdefault(name, (kind, client))
            sets.setdefault(name, [])
            sets[name] += [s for s in plan.sets_of(client) if s not in sets[name]]
    described = {name: describe(*kc) for name, kc in first.items()}
    done: dict[tuple[str, str], SetScores] = {}
    for name, (_, fingerprint) in described.items():
        for s in sets[name]:
            hit = evaluator.cached(s, fingerprint, limit)
            if hit is not None:
                done[(name, s)] = hit
                if progress:
                    progress(len(evaluator.prepared[s].head(limit)))
    slotted = {name: model for name, (model, _) in described.items() if model is not None}
    todo = {name: [s for s in sets[name] if (name, s) not in done] for name in slotted}
    preds = batched_predictions(evaluator, {n: m for n, m in slotted.items() if todo[n]}, todo, shared, limit)
    for name, (kind, client) in first.items():
        fingerprint = described[name][1]
        left = [s for s in sets[name] if (name, s) not in done]
        if left and (name not in slotted or evaluator.generates(limit)):
            activate(kind, client)
        for s in left:
            done[(name, s)] = evaluator.score(s, fingerprint, limit, preds.get(name, {}).get(s))
            if progress:
                progress(len(evaluator.prepared[s].head(limit)))
    return {kind: {c: {s: done[(identity(kind, c), s)] for s in plan.sets_of(c)} for c in plan.clients}
            for kind in kinds}
