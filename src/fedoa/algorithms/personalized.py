"""The shape FedOA, FedSDR, Ditto and FedDPA share: a personal step, then a global step.

Per round a sampled client (from ``fed.personal_start_round`` on) trains its personal adapter P
with the method's own objective, starting from its last P (or ``fed.personal_init``), then trains
the received global adapter G on the task loss and uploads it. A method only says what P's
objective is (:meth:`PersonalThenGlobal.personal_objective`).
"""
from __future__ import annotations

from fedoa.algorithms.base import (
    Algorithm,
    ClientContext,
    ClientUpdate,
    Phase,
    global_job,
    restates,
    train_on_task,
)
from fedoa.model.adapters import GLOBAL, PERSONAL, AdapterState
from fedoa.model.mixing import (
    InstanceWeights,
    activate_both,
    arm_instance_mix,
    mixer_of,
    mixer_off,
    prompt_features,
)
from fedoa.model.slots import SlotModel
from fedoa.training.joint import SlotJob
from fedoa.training.loop import Objective, planned_steps, train_slot
from fedoa.training.losses import task_objective


def arm_personal_mix(ctx: ClientContext, global_state: AdapterState, personal: AdapterState, mode: str = "instance",
                     fixed_weight: float = 0.5, k: int = 5, scale: float = 0.5, on: str = GLOBAL,
                     features: str = "personal", clip: bool = False) -> None:
    """Load G and P and mix them for evaluation (FedDPA's inference; FedOA's "mixed" model)."""
    am = ctx.am
    am.set(GLOBAL, global_state)
    am.set(PERSONAL, personal)
    activate_both(am)
    mix = mixer_of(am)
    if mode == "sum":
        mix.constant(1.0, 1.0)
    elif mode == "fixed":
        mix.constant(fixed_weight, 1.0 - fixed_weight)
    else:
        arm_instance_mix(
            am, [e.prompt for e in ctx.train], ctx.pad_id, k=k, scale=scale, seed=ctx.cfg.seed, on=on,
            feature_slot=PERSONAL if features == "personal" else None, clip=clip,
        )


def personal_mix_model(ctx: ClientContext, global_state: AdapterState, personal: AdapterState, mode: str = "instance",
                       fixed_weight: float = 0.5, k: int = 5, scale: float = 0.5, on: str = GLOBAL,
                       features: str = "personal", clip: bool = False) -> SlotModel:
    """The model :func:`arm_personal_mix` activates, as slots for batched evaluation: P in the row's
    slot, G the shared one. An instance-wise mix computes its anchors here, as the sequential path
    does (the client's training prompts under P alone, or the base model)."""
    if mode == "sum":
        return SlotModel(personal, 1.0, 1.0)
    if mode == "fixed":
        return SlotModel(personal, 1.0 - fixed_weight, fixed_weight)
    if not ctx.train:  # a client without data has no anchors: the global adapter alone
        return SlotModel(personal, 0.0, 1.0)
    am, feature_slot = ctx.am, PERSONAL if features == "personal" else None
    mixer_off(am)
    am.set(PERSONAL, personal)
    anchors = prompt_features(am, feature_slot, [e.prompt for e in ctx.train], ctx.pad_id)
    weights = InstanceWeights(am, anchors, k=k, scale=scale, seed=ctx.cfg.seed, on=on, feature_slot=feature_slot,
                              clip=clip)
    return SlotModel(personal, instance=weights)


class PersonalThenGlobal(Algorithm):
    personal_schedule = True

    def personal_objective(self, ctx: ClientContext, global_state: AdapterState) -> Objective:
        """P's loss; called with G loaded in its slot and P's starting state in its own."""
        return task_objective

    def personal_step(self, ctx: ClientContext, global_state: AdapterState, round_: int,
                      objective: Objective | None = None) -> Phase:
        am = ctx.am
        am.set(PERSONAL, self.starting_personal(ctx.state, global_state))
        result = train_slot(
            am, PERSONAL, ctx.train, self.cfg.train, objective or self.personal_objective(ctx, global_state),
            ctx.seed_text(round_, "personal"), ctx.pad_id, ctx.progress,
        )
        ctx.state[PERSONAL] = am.get(PERSONAL)
        return Phase.of("personal", result)

    def personal_round(self, round_: int) -> bool:
        """True when ``round_`` has a personal step (``fed.personal_start_round`` on)."""
        return round_ >= self.cfg.fed.personal_start_round

    def client_update(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> ClientUpdate:
        ctx.am.set(GLOBAL, global_state)  # the personal objective may read G (features, mix, prox)
        phases = []
        if self.personal_round(round_):
            phases.append(self.personal_step(ctx, global_state, round_))
        state, phase = train_on_task(ctx, GLOBAL, global_state, round_, "global")
        return ClientUpdate(ctx.name, state, len(ctx.train), phases + [phase])

    def personal_job(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> SlotJob | None:
        """The personal step as a slot job (None: it cannot be batched); a method adds its term."""
        if not restates(self, PersonalThenGlobal, "personal_job", "personal_objective", "personal_step"):
            return None
        return SlotJob("personal", self.starting_personal(ctx.state, global_state), ctx.train,
                       ctx.seed_text(round_, "personal"))

    def client_jobs(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> list[SlotJob] | None:
        """Both steps in the same joint loop: the global step starts from the received G, not from the
        personal step's result, so the two are independent and train side by side."""
        if not restates(self, PersonalThenGlobal, "client_jobs", "client_update"):
            return None
        jobs = [global_job(ctx, global_state, round_)]
        if self.personal_round(round_):
            personal = self.personal_job(ctx, global_state, round_)
            if personal is None:
                return None
            jobs.insert(0, personal)
        return jobs

    def finish_jobs(self, ctx: ClientContext, global_state: AdapterState, round_: int,
                    done: dict[str, tuple[AdapterState, Phase]]) -> ClientUpdate:
        phases = []
        if "personal" in done:
            ctx.state[PERSONAL], personal = done["personal"]
            phases.append(personal)
        state, phase = done["global"]
        return ClientUpdate(ctx.name, state, len(ctx.train), phases + [phase])

    def local_steps(self, num_examples: int, round_: int) -> int:
        n = planned_steps(num_examples, self.cfg.train)
        return 2 * n if self.personal_round(round_) else n
