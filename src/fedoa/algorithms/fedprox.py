"""FedProx: FedIT plus a proximal term toward the received global adapter.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in Heterogeneous Networks",
MLSys 2020.

The local objective of a sampled client is
``CE(y | x; base + w) + mu/2 * ||w - w_global||^2``, with ``w`` the LoRA parameters (every A and
B matrix) of the adapter being trained and ``w_global`` the adapter received this round (fixed
during the update). The server averages the uploads as FedIT does. ``fedprox.mu = 0`` is FedIT
exactly (same seeds, same batches; the term is skipped, not multiplied by 0).

Deviations: the proximal term is in the parameter space of the *LoRA factors*, not of the
effective weight update ``B @ A`` (which is what a full-model FedProx would see); it is added
once per optimizer step (spread over the micro-batches of gradient accumulation). The paper's
inexact local solver and variable local work are not modelled: every client runs the same
``train`` schedule. Evaluated: the global adapter only (see :mod:`fedoa.algorithms.fedit`).
"""
from __future__ import annotations

import torch

from fedoa.algorithms.base import ClientContext, global_job
from fedoa.algorithms.fedit import FedIT
from fedoa.config import Section, setting
from fedoa.data.batching import Batch
from fedoa.model.adapters import GLOBAL, AdapterModel, AdapterState
from fedoa.registry import register
from fedoa.training.joint import SlotJob
from fedoa.training.loop import Objective
from fedoa.training.losses import task_objective


class FedProxSettings(Section):
    """FedProx: the proximal term of the local objective."""

    mu: float = setting(
        0.01,
        "mu: weight of FedProx's proximal term mu/2 * ||w - w_global||^2 on the adapter's LoRA parameters "
        "(0 = FedIT).",
        ge=0,
    )


def squared_distance(params: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """``||params - anchor||^2`` summed over every tensor (float32 accumulation)."""
    return sum((p.float() - anchor[k].float()).pow(2).sum() for k, p in params.items())


def device_copy(state: AdapterState, am: AdapterModel, slot: str) -> dict[str, torch.Tensor]:
    """``state`` on the slot's device and dtype, detached: the fixed anchor of a proximal term."""
    params = am.params[slot]
    return {k: state[k].detach().to(device=p.device, dtype=p.dtype) for k, p in params.items()}


def with_proximal(base: Objective, slot: str, anchor: dict[str, torch.Tensor], weight: float) -> Objective:
    """``base + weight/2 * ||params(slot) - anchor||^2``; the metric ``prox`` is the squared distance.

    ``train_slot`` scales each micro-batch's loss by its share of the step, so the term adds up
    to exactly one ``weight/2 * ||.||^2`` per optimizer step.
    """

    def objective(am: AdapterModel, batch: Batch):
        loss, parts = base(am, batch)
        prox = squared_distance(am.params[slot], anchor)
        return loss + 0.5 * weight * prox, {**parts, "prox": prox.item()}

    return objective


@register(FedProxSettings)
class FedProx(FedIT):
    name = "fedprox"

    def global_objective(self, ctx: ClientContext, global_state: AdapterState) -> Objective:
        mu = self.settings.mu
        if mu == 0:
            return task_objective
        return with_proximal(task_objective, GLOBAL, device_copy(global_state, ctx.am, GLOBAL), mu)

    def client_jobs(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> list[SlotJob]:
        mu = self.settings.mu
        return [global_job(ctx, global_state, round_, prox=mu, anchor=global_state) if mu else
                global_job(ctx, global_state, round_)]
