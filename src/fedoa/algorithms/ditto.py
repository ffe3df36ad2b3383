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

from fedoa.algorithms.base import ClientContext
from fedoa.algorithms.fedprox import device_copy, with_proximal
from fedoa.algorithms.personalized import PersonalThenGlobal
from fedoa.config import Section, setting
from fedoa.model.adapters import PERSONAL, AdapterState
from fedoa.registry import register
from fedoa.training.joint import SlotJob
from fedoa.training.loop import Objective
from fedoa.training.losses import task_objective


class DittoSettings(Section):
    """Ditto: the personal adapter's proximal term."""

    lam: float = setting(
        0.1,
        "lambda: weight of Ditto's proximal term lambda/2 * ||P - G||^2 pulling the personal adapter toward "
        "the received global adapter (parameter space, with a real gradient).",
        ge=0,
    )


@register(DittoSettings)
class Ditto(PersonalThenGlobal):
    name = "ditto"

    def personal_objective(self, ctx: ClientContext, global_state: AdapterState) -> Objective:
        lam = self.settings.lam
        if lam == 0:
            return task_objective
        return with_proximal(task_objective, PERSONAL, device_copy(global_state, ctx.am, PERSONAL), lam)

    def personal_job(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> SlotJob:
        job = super().personal_job(ctx, global_state, round_)
        job.prox, job.anchor = self.settings.lam, global_state
        return job
