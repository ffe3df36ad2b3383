"""Ditto: a personal adapter pulled toward the global adapter in parameter space.

Li, Hu, Beirami, Smith. "Ditto: Fair and Robust Federated Learning Through Personalization",
ICML 2021.

Per round a sampled client (1) trains its personal adapter P on
``CE(y | x; base + P) + lambda/2 * ||P - G||^2`` where ``G`` is the global adapter it *received*
this round (fixed during the step) and the norm runs over every LoRA A and B matrix; then
(2) trains the received G with the plain task loss and uploads it; the server averages the
uploads (FedAvg). Personal and global models are both evaluated.

Unlike the FedOA reference code's parameter-space term (accumulated with ``.item()``, hence no
gradient), the proximal term here is part of the autograd graph: its gradient
``lambda * (P - G)`` reaches P.

Deviations / choices:
- The personal step runs from ``fed.personal_start_round`` on and starts from
  ``fed.personal_init`` (as FedOA's), so the methods share the schedule. Ditto's own
  initialization ``v^0 = w^0`` corresponds to ``fed.personal_init = "global"``; with the default
  fresh LoRA init, P's A matrices start far from G's and the term first pulls them together.
- The distance is between LoRA factors, not effective weight updates ``B @ A``.
- P takes ``train.epochs`` of AdamW like every local update (Ditto's paper: s local SGD steps
  with the same learning rate); the personal step comes before the global step, both from the
  received G (in Ditto they are independent given ``w^t``, so the order does not matter).
"""
from __future__ import annotations

from fedoa.algorithms.base import Algorithm, ClientContext, ClientUpdate, Phase
from fedoa.algorithms.fedprox import device_copy, with_proximal
from fedoa.algorithms.registry import register
from fedoa.model.adapters import GLOBAL, PERSONAL, AdapterState
from fedoa.training.loop import planned_steps, train_slot
from fedoa.training.losses import task_objective


@register
class Ditto(Algorithm):
    name = "ditto"

    def personal_step(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> Phase:
        am, lam = ctx.am, self.cfg.ditto.lam
        am.set(PERSONAL, self.starting_personal(ctx.state, global_state))
        objective = task_objective
        if lam > 0:
            objective = with_proximal(task_objective, PERSONAL, device_copy(global_state, am, PERSONAL), lam)
        result = train_slot(
            am, PERSONAL, ctx.train, self.cfg.train, objective, ctx.seed_text(round_, "personal"),
            ctx.pad_id, ctx.progress,
        )
        ctx.state[PERSONAL] = am.get(PERSONAL)
        return Phase.of("personal", result)

    def client_update(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> ClientUpdate:
        am = ctx.am
        am.set(GLOBAL, global_state)
        phases = []
        if round_ >= self.cfg.fed.personal_start_round:
            phases.append(self.personal_step(ctx, global_state, round_))
        result = train_slot(
            am, GLOBAL, ctx.train, self.cfg.train, task_objective, ctx.seed_text(round_, "global"),
            ctx.pad_id, ctx.progress,
        )
        phases.append(Phase.of("global", result))
        return ClientUpdate(ctx.name, am.get(GLOBAL), len(ctx.train), phases)

    def local_steps(self, num_examples: int, round_: int) -> int:
        n = planned_steps(num_examples, self.cfg.train)
        return 2 * n if round_ >= self.cfg.fed.personal_start_round else n
