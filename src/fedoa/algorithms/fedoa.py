"""FedOA: personalized adapters regularized toward the global model's features.

Yang, Long, Zhou, Lu, Ye, Jiang. "Federated Adapter on Foundation Models: An Out-Of-Distribution
Approach", arXiv 2505.01075 (2025).

Per round a sampled client (1) trains its personal adapter P on
``CE(y | x; base + P) + lambda * D(h_P(x), stopgrad(h_G(x)))`` with ``h_G`` from the *received*
global adapter, then (2) trains the received global adapter G with the plain task loss and
uploads it; the server averages the uploads (FedAvg).

With no overrides it makes the reference code's choices (Lydia-yang/FedOA): ``h`` is the final
hidden state at the last token of prompt + answer (the end-of-sequence token), ``D`` the batch
Frobenius norm ``torch.dist``, lambda 0.5, P starts as a fresh LoRA adapter in round 2.

Evaluated models: "personal" (P alone), "mixed" (P and the final G mixed per test input the way
FedDPA answers, which the reference evaluation script can also do; the paper does not say which
of the two its table reports) and "global".

Departures from the reference code (see docs/method.md, with their measured effects):
- ``h_G`` is computed once per local update, in eval mode (no LoRA dropout), not re-run on every
  step of every epoch; G is fixed during the personal step, so the target is the same up to
  dropout noise.
- P persists across rounds even when a client skips rounds (the reference re-initializes it).
- Options beyond the reference: ``D`` mean squared L2 or cosine; ``h`` at the last prompt token
  (``feature = "answer"``) or the mean; P started from the received G (``fed.personal_init``).
"""
from __future__ import annotations

from typing import Literal

import torch

from fedoa.algorithms.base import ClientContext, ClientUpdate, train_on_task
from fedoa.algorithms.personalized import PersonalThenGlobal, arm_personal_mix
from fedoa.algorithms.regularizers import distance
from fedoa.config import Section, setting
from fedoa.data.batching import Batch
from fedoa.model.adapters import GLOBAL, AdapterModel, AdapterState
from fedoa.registry import register
from fedoa.training.loop import Objective
from fedoa.training.losses import (
    example_features,
    features,
    response_loss,
    task_objective,
)

FEATURE_HELP = (
    "Feature h(x): final hidden state at the last token of prompt + response (the reference), at the "
    "last prompt token (the state the LM head reads to predict the answer), or the mean over tokens."
)


class FedOASettings(Section):
    """FedOA: the personal adapter's feature regularizer."""

    regular_weight: float = setting(0.5, "lambda: weight of the feature-distance regularizer (0: the ablation).", ge=0)
    distance: Literal["frobenius", "mse", "cosine"] = setting(
        "frobenius",
        "'frobenius': the reference's torch.dist over the micro-batch (not squared, not averaged); "
        "'mse': mean squared L2 per example; 'cosine': mean (1 - cosine similarity).",
    )
    feature: Literal["last_token", "answer", "mean"] = setting("last_token", FEATURE_HELP)
    target_features: Literal["separate_pass", "global_step"] = setting(
        "separate_pass",
        "Where h_G comes from: 'separate_pass' (the received G's features, one forward pass over the client's "
        "data per round; the reference recomputes them every step) or 'global_step' (the features the global "
        "step's own forward passes produce, last epoch, with dropout as the reference's: no extra pass; the "
        "global step then runs first).",
    )
    mixed_eval: bool = setting(
        True,
        "Also evaluate each client's 'mixed' model: personal and global adapter mixed per test input the "
        "way FedDPA answers (the reference evaluation script's instance-wise mode).",
    )


def feature_regularized(target: torch.Tensor, weight: float, dist: str, kind: str) -> Objective:
    """Task loss + ``weight * D(h(x), target[x])``; ``target`` rows are indexed by example id."""

    def objective(am: AdapterModel, batch: Batch):
        loss, hidden = response_loss(am, batch)
        reg = distance(dist, features(hidden, batch, kind), target[batch.ids])
        return loss + weight * reg, {"task_loss": loss.item(), "reg": reg.item()}

    return objective


def capturing(store: torch.Tensor, kind: str) -> Objective:
    """The task loss, leaving each example's features in ``store`` (rows by example id)."""

    def objective(am: AdapterModel, batch: Batch):
        loss, hidden = response_loss(am, batch)
        store[batch.ids] = features(hidden, batch, kind).detach().to(store.dtype)
        return loss, {"task_loss": loss.item()}

    return objective


@register(FedOASettings)
class FedOA(PersonalThenGlobal):
    name = "fedoa"

    @property
    def evaluated(self) -> tuple[str, ...]:
        return ("personal", "mixed", "global") if self.settings.mixed_eval else ("personal", "global")

    def setup_eval(self, ctx: ClientContext, kind: str, global_state: AdapterState) -> None:
        if kind == "mixed":  # FedDPA's instance-wise inference with the reference's defaults
            arm_personal_mix(ctx, global_state, self.starting_personal(ctx.state, global_state))
        else:
            super().setup_eval(ctx, kind, global_state)

    def eval_uses_training_data(self, kind: str) -> bool:
        return kind == "mixed"

    def personal_objective(self, ctx: ClientContext, global_state: AdapterState) -> Objective:
        c = self.settings
        if c.regular_weight == 0:
            return task_objective
        # G is fixed during the personal step: its features are computed once, not per step.
        target = example_features(ctx.am, GLOBAL, ctx.train, c.feature, self.cfg.train.micro_batch_size, ctx.pad_id)
        return feature_regularized(target, c.regular_weight, c.distance, c.feature)

    def client_update(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> ClientUpdate:
        c = self.settings
        if c.target_features != "global_step" or c.regular_weight == 0 or round_ < self.cfg.fed.personal_start_round:
            return super().client_update(ctx, global_state, round_)
        # The global step first; its forward passes leave h_G(x) of every example (no extra pass).
        target = torch.zeros(len(ctx.train), ctx.am.base.config.hidden_size, device=ctx.am.device)
        state, global_phase = train_on_task(ctx, GLOBAL, global_state, round_, "global",
                                            capturing(target, c.feature), memoize=False)
        personal = self.personal_step(ctx, global_state, round_,
                                      feature_regularized(target, c.regular_weight, c.distance, c.feature))
        return ClientUpdate(ctx.name, state, len(ctx.train), [personal, global_phase])
