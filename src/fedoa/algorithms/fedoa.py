"""FedOA: personalized adapters regularized toward the global model's features.

Yang, Long, Zhou, Lu, Ye, Jiang. "Federated Adapter on Foundation Models: An Out-Of-Distribution
Approach", arXiv 2505.01075 (2025).

Per round a sampled client (1) trains its personal adapter P on
``CE(y | x; base + P) + lambda * D(h_P(x), stopgrad(h_G(x)))`` with ``h_G`` from the *received*
global adapter, then (2) trains the received global adapter G with the plain task loss and
uploads it; the server averages the uploads (FedAvg).

Deviations from the reference code (all deliberate; see docs/method.md):
- ``h_G`` is computed once per local update, in eval mode (no LoRA dropout), not re-run on every
  step of every epoch; G is fixed during the personal step, so the target is the same.
- P persists across rounds even when a client skips rounds (the reference re-initializes it).
- ``D`` may be the reference's batch Frobenius norm (default), mean squared L2 or cosine, and
  ``h`` the last token's or the mean final hidden state.
"""
from __future__ import annotations

import torch

from fedoa.algorithms.base import ClientContext
from fedoa.algorithms.personalized import PersonalThenGlobal
from fedoa.algorithms.registry import register
from fedoa.algorithms.regularizers import distance
from fedoa.data.batching import Batch
from fedoa.model.adapters import GLOBAL, AdapterModel, AdapterState
from fedoa.training.loop import Objective
from fedoa.training.losses import example_features, features, response_loss, task_objective


def feature_regularized(target: torch.Tensor, weight: float, dist: str, kind: str) -> Objective:
    """Task loss + ``weight * D(h(x), target[x])``; ``target`` rows are indexed by example id."""

    def objective(am: AdapterModel, batch: Batch):
        loss, hidden = response_loss(am, batch)
        reg = distance(dist, features(hidden, batch, kind), target[batch.ids])
        return loss + weight * reg, {"task_loss": loss.item(), "reg": reg.item()}

    return objective


@register
class FedOA(PersonalThenGlobal):
    name = "fedoa"

    def personal_objective(self, ctx: ClientContext, global_state: AdapterState) -> Objective:
        c = self.cfg.fedoa
        if c.regular_weight == 0:
            return task_objective
        # G is fixed during the personal step: its features are computed once, not per step.
        target = example_features(ctx.am, GLOBAL, ctx.train, c.feature, self.cfg.train.micro_batch_size, ctx.pad_id)
        return feature_regularized(target, c.regular_weight, c.distance, c.feature)
