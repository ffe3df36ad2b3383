"""Batched evaluation: the models that meet a test set score each batch of its records in one pass.

With ``runtime.batch_clients`` on, the in-process runtime describes each model it evaluates as slot
adapters (``Algorithm.eval_model``: a client's personal adapter, the global one, the base model
alone, a mix of a personal adapter and the global one, constant or instance-wise). They are stacked
in one :class:`SlotBank`, and each batch of a test set's records (the sequential path's batches:
``eval.batch_size`` records sorted by prompt length) is scored by every model that meets the set at
once: the pass's rows are the records repeated once per model, each row routed to its model's slot
(``model/slots.py``), in the prompt pass and in the KV-cache continuation of multi-token options
alike. An instance-wise mix (FedDPA's inference, FedOA's mixed model) weighs its rows from their
features under its feature slot, taken for all such models in one extra pass over the same
left-padded prompts. A pass holds ``eval.batch_size`` x models rows (at most :data:`MAX_ROWS`:
more models take several passes). Outcomes equal the sequential
path's; option scores agree within float rounding.

Still one model at a time, the model activated as in the sequential path:
- a model with no slot form (``eval_model`` None: a plugin method that builds its models its own way);
- generation and ROUGE (decoding through ``generate`` runs the active model only): with
  ``eval.metric = "both"`` or ``eval.rouge`` the options are batched and each model's
  generations then run alone; ``eval.metric = "generation"`` is wholly sequential.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from fedoa.evaluation.matrix import EvalPlan, Evaluator, SetScores, evaluate_models
from fedoa.evaluation.scoring import best_option, left_pad, option_scores, scored_batches
from fedoa.model.adapters import GLOBAL, AdapterModel, AdapterState
from fedoa.model.mixing import last_token_index
from fedoa.model.slots import Routing, SlotBank, SlotModel, routed

Scores = dict[str, dict[str, dict[str, SetScores]]]  # kind -> client -> set -> scores

#: rows per pass at most (``eval.batch_size`` x models): more models than that take several passes,
#: so the KV cache of a pass stays bounded (SmolLM2, 512-token prompts, bf16: ~12 MB per row)
MAX_ROWS = 1024


def _zeros(am: AdapterModel) -> AdapterState:
    """A slot that adds nothing: the base model alone (zero LoRA matrices add exact zeros)."""
    return {k: torch.zeros(p.shape) for k, p in am.params[am.slots[0]].items()}


def _row_weights(values: list[float], rows: int, unit: float, device) -> torch.Tensor | None:
    """Per-row weights of models whose rows come in groups of ``rows`` (None: all ``unit``)."""
    if all(v == unit for v in values):
        return None
    return torch.tensor(values, dtype=torch.float32, device=device).repeat_interleave(rows)


def _instance_weights(am: AdapterModel, bank: SlotBank, models: list[SlotModel], slots: list[int], zero: int,
                      prompts: list[tuple[int, ...]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row weights (own, shared) of every model's rows, an instance-wise mix's from each input's
    features under its feature slot (the own adapter alone, or the base model: slot ``zero``), taken
    in one pass over the mixes' rows, of the left-padded prompts that ``option_scores`` builds."""
    n, device = len(prompts), am.device
    own = torch.tensor([m.own_weight for m in models], dtype=torch.float32).repeat_interleave(n).to(device)
    fixed = torch.tensor([m.fixed_weight for m in models], dtype=torch.float32).repeat_interleave(n).to(device)
    mixes = [j for j, m in enumerate(models) if m.instance is not None]
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    feature_slots = [slots[j] if models[j].instance.feature_slot is not None else zero for j in mixes]
    with routed(am, bank, Routing(torch.tensor(feature_slots, device=device), n)):
        hidden = am.decoder(input_ids=ids.repeat(len(mixes), 1), attention_mask=mask.repeat(len(mixes), 1),
                            position_ids=positions.repeat(len(mixes), 1), use_cache=False).last_hidden_state
    last = last_token_index(mask)
    for i, j in enumerate(mixes):
        mix = models[j].instance
        w = mix.row_weight(hidden[i * n + torch.arange(n, device=device), last].float(), ids, mask)
        rows = slice(j * n, (j + 1) * n)
        fixed[rows], own[rows] = (w, 1 - w) if mix.on == GLOBAL else (1 - w, w)
    return own, fixed


@torch.no_grad()
def slot_option_scores(am: AdapterModel, bank: SlotBank, models: list[SlotModel], slots: list[int],
                       prompts: list[tuple[int, ...]], options: list[list[tuple[int, ...]]],
                       pad_id: int, zero: int | None = None) -> list[list[list[float]]]:
    """``option_scores`` of one batch of records under each of ``models`` (in ``bank``'s
    ``slots``), all in one pass: ``[model][record][option]``. ``zero``: a slot of zeros (the base
    model), needed by instance-wise mixes whose features come from the base model."""
    n, device = len(prompts), am.device
    if any(m.instance is not None for m in models):
        own, fixed = _instance_weights(am, bank, models, slots, zero, prompts, pad_id)
    else:
        own = _row_weights([m.own_weight for m in models], n, 1.0, device)
        fixed = _row_weights([m.fixed_weight for m in models], n, 0.0, device)
    routing = Routing(torch.tensor(slots, device=device), n, own, fixed)

    def engage(rows: torch.Tensor | None):
        return routed(am, bank, routing if rows is None else routing.select(rows))

    flat = option_scores(am, prompts * len(models), options * len(models), pad_id, engage)
    return [flat[j * n : (j + 1) * n] for j in range(len(models))]


def batched_predictions(evaluator: Evaluator, models: dict[str, SlotModel], sets: dict[str, list[str]],
                        shared: AdapterState, limit: int | None) -> dict[str, dict[str, list[int]]]:
    """``model -> set -> option predictions`` of every model on the sets it meets (``sets``),
    each batch of a set's records scored by all its models in one pass."""
    if not models:
        return {}
    start, am = time.perf_counter(), evaluator.am
    names = list(models)
    mixed = any(m.fixed_weight or m.instance is not None for m in models.values())
    zero = len(names)  # a last slot of zeros: the base model (zero-shot, an instance mix's features)
    bank = SlotBank(am, [_zeros(am) if m.own is None else m.own for m in models.values()] + [_zeros(am)],
                    trainable=False, fixed=shared if mixed else None)
    out: dict[str, dict[str, list[int]]] = {name: {} for name in names}
    for s in dict.fromkeys(s for name in names for s in sets[name]):
        meeting = [name for name in names if s in sets[name]]
        ps = evaluator.prepared[s].head(limit)
        preds = {name: [-1] * len(ps) for name in meeting}
        per_pass = max(1, MAX_ROWS // evaluator.cfg.batch_size)
        for idx in scored_batches(ps, evaluator.cfg.batch_size):
            for first in range(0, len(meeting), per_pass):
                part = meeting[first : first + per_pass]
                scores = slot_option_scores(am, bank, [models[m] for m in part], [names.index(m) for m in part],
                                            [ps.prompts[i] for i in idx], [ps.options[i] for i in idx],
                                            evaluator.pad_id, zero)
                for name, block in zip(part, scores):
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
    only: set[tuple[str, str]] | None = None,
) -> Scores:
    """What :func:`~fedoa.evaluation.matrix.evaluate_models` returns, the option scoring of every
    model with a slot form batched. ``describe(kind, client)``: the model as slots (None: it
    is scored alone) and its fingerprint; ``shared``: the adapter a mix adds to every row (G);
    ``only``: as in :func:`~fedoa.evaluation.matrix.evaluate_models`."""
    def wanted(kind: str, s: str) -> bool:
        return only is None or (kind, s) in only

    if evaluator.cfg.metric == "generation":  # nothing to batch
        return evaluate_models(evaluator, plan, kinds, identity, activate, progress, only)
    limit = plan.limit or None
    first: dict[str, tuple[str, str]] = {}  # a model -> the first (kind, client) that names it
    sets: dict[str, list[str]] = {}  # a model -> the sets it meets
    for kind in kinds:
        for client in plan.clients:
            name = identity(kind, client)
            first.setdefault(name, (kind, client))
            sets.setdefault(name, [])
            sets[name] += [s for s in plan.sets_of(client) if s not in sets[name] and wanted(kind, s)]
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
    return {kind: {c: {s: done[(identity(kind, c), s)] for s in plan.sets_of(c) if wanted(kind, s)}
                   for c in plan.clients} for kind in kinds}
