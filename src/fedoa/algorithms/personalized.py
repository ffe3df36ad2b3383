"""The shape FedOA, FedSDR, Ditto and FedDPA share: a personal step, then a global step.

Per round a sampled client (from ``fed.personal_start_round`` on) trains its personal adapter P
with the method's own objective, starting from its last P (or ``fed.personal_init``), then trains
the received global adapter G on the task loss and uploads it. A method only says what P's
objective is (:meth:`PersonalThenGlobal.personal_objective`).
"""
from __future__ import annotations

from fedoa.algorithms.base import Algorithm, ClientContext, ClientUpdate, Phase
from fedoa.model.adapters import GLOBAL, PERSONAL, AdapterState
from fedoa.training.loop import Objective, planned_steps, train_slot
from fedoa.training.losses import task_objective


class PersonalThenGlobal(Algorithm):
    def personal_objective(self, ctx: ClientContext, global_state: AdapterState) -> Objective:
        """P's loss; called with G loaded in its slot and P's starting state in its own."""
        return task_objective

    def personal_step(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> Phase:
        am = ctx.am
        am.set(PERSONAL, self.starting_personal(ctx.state, global_state))
        result = train_slot(
            am, PERSONAL, ctx.train, self.cfg.train, self.personal_objective(ctx, global_state),
            ctx.seed_text(round_, "personal"), ctx.pad_id, ctx.progress,
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
            phases.append(self.personal_step(ctx, global_state, round_))
        phases.append(self.global_step(ctx, round_))
        return ClientUpdate(ctx.name, ctx.am.get(GLOBAL), len(ctx.train), phases)

    def local_steps(self, num_examples: int, round_: int) -> int:
        n = planned_steps(num_examples, self.cfg.train)
        return 2 * n if round_ >= self.cfg.fed.personal_start_round else n
