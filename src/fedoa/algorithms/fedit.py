"""FedIT: FedAvg of one LoRA adapter, no personalization.

Zhang, Vahidian, Kuo, Li, Ruan, Lan, Chen, Xu, Chen. "Towards Building the Federated GPT:
Federated Instruction Tuning", ICASSP 2024 (arXiv 2305.05644, 2023).

Per round a sampled client trains the received global adapter on the plain task loss and
uploads it; the server averages the uploads (FedAvg, LoRA A and B separately, uniform or
example-count weights as ``fed.aggregation`` says).

Evaluated models: the global adapter only (``evaluated = ("global",)``). FedIT has no personal
model, so reports show "—" in the personal columns instead of repeating the global numbers
(every client's model *is* the global adapter; its ID/OOD numbers are in the global columns).

Deviations: none in the algorithm. The local update is our shared loop (AdamW, a fresh optimizer
and a linear decay per local update, as the reference's per-round HF Trainer has), and its
batch order / dropout draws use the same seeds as FedOA's global step ("global" phase), so FedIT
and FedOA train G identically in round 1.
"""
from __future__ import annotations

from fedoa.algorithms.base import (
    Algorithm,
    ClientContext,
    ClientState,
    ClientUpdate,
    Phase,
    global_job,
    restates,
    train_on_task,
)
from fedoa.model.adapters import GLOBAL, AdapterModel, AdapterState
from fedoa.registry import register
from fedoa.training.joint import SlotJob
from fedoa.training.loop import Objective
from fedoa.training.losses import task_objective


@register()
class FedIT(Algorithm):
    name = "fedit"
    evaluated = ("global",)

    def init_client(self, am: AdapterModel, client: str) -> ClientState:
        return {}  # nothing private

    def global_objective(self, ctx: ClientContext, global_state: AdapterState) -> Objective:
        """The local objective of the global adapter (FedProx adds its proximal term)."""
        return task_objective

    def client_update(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> ClientUpdate:
        objective = self.global_objective(ctx, global_state)
        state, phase = train_on_task(ctx, GLOBAL, global_state, round_, "global", objective,
                                     memoize=objective is task_objective)
        return ClientUpdate(ctx.name, state, len(ctx.train), [phase])

    def client_jobs(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> list[SlotJob] | None:
        if not restates(self, FedIT, "client_jobs", "client_update", "global_objective"):
            return None
        return [global_job(ctx, global_state, round_)]

    def finish_jobs(self, ctx: ClientContext, global_state: AdapterState, round_: int,
                    done: dict[str, tuple[AdapterState, Phase]]) -> ClientUpdate:
        state, phase = done["global"]
        return ClientUpdate(ctx.name, state, len(ctx.train), [phase])
