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

from fedoa.algorithms.base import Algorithm, ClientContext, ClientUpdate, Phase
from fedoa.algorithms.registry import register
from fedoa.algorithms.regularizers import distance
from fedoa.data.batching import Batch
from fedoa.model.adapters import GLOBAL, PERSONAL, AdapterModel, AdapterState
from fedoa.training.losses import example_features, features, response_loss, task_objective
from fedoa.training.loop import Objective, planned_steps, train_slot


def feature_regularized(target: torch.Tensor, weight: float, dist: str, kind: str) -> Objective:
    """Task loss + ``weight * D(h(x), target[x])``; ``target`` rows are indexed by example id."""

    def objective(am: AdapterModel, batch: Batch):
        loss, hidden = response_loss(am, batch)
        reg = distance(dist, features(hidden, batch, kind), target[batch.ids])
        return loss + weight * reg, {"task_loss": loss.item(), "reg": reg.item()}

    return objective


@register
class FedOA(Algorithm):
    name = "fedoa"

    def personal_step(self, ctx: ClientContext, round_: int) -> Phase:
        cfg, am = self.cfg, ctx.am
        am.set(PERSONAL, self.starting_personal(ctx.state, am.get(GLOBAL)))
        if cfg.fedoa.regular_weight > 0:
            target = example_features(
                am, GLOBAL, ctx.train, cfg.fedoa.feature, cfg.train.micro_batch_size, ctx.pad_id
            )
            objective = feature_regularized(
                target, cfg.fedoa.regular_weight, cfg.fedoa.distance, cfg.fedoa.feature
            )
        else:
            objective = task_objective
        result = train_slot(
            am, PERSONAL, ctx.train, cfg.train, objective, ctx.seed_text(round_, "personal"),
            ctx.pad_id, ctx.progress,
        )
        ctx.state[PERSONAL] = am.get(PERSONAL)
        return Phase.of("personal", result)

    def global_step(self, ctx: ClientContext, round_: int) -> Phase:
        result = train_slot(
            ctx.am, GLOBAL, ctx.train, self.cfg.train, task_objective,
            ctx.seed_text(round_, "global"), ctx.pad_id, ctx.progress,
        )
        return Phase.of("global", result)

    def client_update(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> ClientUpdate:
        ctx.am.set(GLOBAL, global_state)
        phases = []
        if round_ >= self.cfg.fed.personal_start_round:
            phases.append(self.personal_step(ctx, round_))
        phases.append(self.global_step(ctx, round_))
        return ClientUpdate(ctx.name, ctx.am.get(GLOBAL), len(ctx.train), phases)

    def local_steps(self, num_examples: int, round_: int) -> int:
        n = planned_steps(num_examples, self.cfg.train)
        return 2 * n if round_ >= self.cfg.fed.personal_start_round else n
