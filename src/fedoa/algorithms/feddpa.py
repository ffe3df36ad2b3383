"""FedDPA: a federated global adapter plus a local adapter, mixed per test instance.

Yang, Long, Shen, Jiang, Blumenstein. "Dual-Personalizing Adapter for Federated Foundation
Models", NeurIPS 2024 (arXiv 2403.19211); reference code Lydia-yang/FedDPA (read 2026-11-27).

Training (FedDPA-T, the iterative variant, as the reference code does it): per round a sampled
client
1. trains its local (personal) adapter P under the mix ``W0 x + a * P(x) + (1 - a) * detach(G(x))``
   with the received global adapter G frozen and its output detached (``feddpa.local_weight``
   a = 0.5), from ``fed.personal_start_round`` on (the reference: round 2), starting from its
   own last P (a fresh LoRA init the first time);
2. trains the received G with the plain task loss and uploads it; the server averages (FedAvg).

Inference ("personal" model of a client), ``feddpa.mix``:
- ``instance`` (the reference's instance-wise weighting): for a test input x, ``num_instances``
  (5) of the client's training prompts are drawn *per input*; ``w = sim_scale * mean_k cos(h(x),
  h(x_k))`` with ``h`` the final hidden state at the last prompt token *under the local adapter
  alone*; every LoRA layer outputs ``W0 x + w * G(x) + (1 - w) * P(x)`` (w on the global adapter,
  ``instance_weight_on = "global"``), unclipped;
- ``fixed``: ``W0 x + w * G(x) + (1 - w) * P(x)`` with ``w = fixed_weight`` for every input;
- ``sum``: ``W0 x + G(x) + P(x)``.
The "global" model is G alone. The mechanism lives in :mod:`fedoa.model.mixing`.

Departures from the reference (see docs/method.md):
- the per-input draw of training instances is seeded by the input's tokens (the reference draws
  unseeded), so a score is reproducible and independent of batching;
- options keep the earlier choices as settings: ``instance_weight_on = "personal"``,
  ``similarity_features = "base"`` (the bare base model's features), ``clip = true``;
- P persists across rounds even when a client skips one (the reference reloads it only from the
  previous round's file, else starts fresh).
"""
from __future__ import annotations

from typing import Literal

from fedoa.algorithms.base import ClientContext
from fedoa.algorithms.personalized import PersonalThenGlobal, arm_personal_mix, personal_mix_model
from fedoa.config import Section, setting
from fedoa.data.batching import Batch
from fedoa.model.adapters import GLOBAL, PERSONAL, AdapterModel, AdapterState
from fedoa.model.mixing import activate_both, mixer_of
from fedoa.model.slots import SlotModel
from fedoa.registry import register
from fedoa.training.joint import SlotJob
from fedoa.training.loop import Objective
from fedoa.training.losses import task_objective


class FedDPASettings(Section):
    """FedDPA: the local adapter's training mix and the instance-wise inference."""

    local_weight: float = setting(
        0.5, "a: the local adapter is trained under W0 x + a*P(x) + (1 - a)*detach(G(x)) (the reference: 0.5).",
        gt=0, le=1,
    )
    mix: Literal["instance", "fixed", "sum"] = setting(
        "instance",
        "How the personal model combines the two adapters' outputs: 'instance' (FedDPA's instance-wise weight "
        "from feature similarity to local training prompts drawn per input), 'fixed' (w_G = fixed_weight, "
        "w_P = 1 - fixed_weight), 'sum' (base + G + P).",
    )
    fixed_weight: float = setting(0.5, "w_G of the 'fixed' mix: output = base + w_G*G + (1 - w_G)*P.", ge=0, le=1)
    num_instances: int = setting(5, "Local training prompts drawn per test input for 'instance'.", ge=1)
    sim_scale: float = setting(0.5, "Instance weight w = sim_scale * mean cosine similarity.", ge=0)
    instance_weight_on: Literal["personal", "global"] = setting(
        "global", "Which adapter gets the instance weight w (the other gets 1 - w); the reference: 'global'."
    )
    similarity_features: Literal["personal", "base"] = setting(
        "personal",
        "Features of the similarity: final hidden state at the last prompt token under the local adapter alone "
        "(the reference) or under the bare base model.",
    )
    clip: bool = setting(False, "Clip w to [0, 1] (the reference does not).")


def under_training_mix(objective: Objective, local_weight: float) -> Objective:
    """``objective`` with the forward pass ``W0 x + a P(x) + (1 - a) detach(G(x))``: FedDPA's local training."""

    def run(am: AdapterModel, batch: Batch):
        mix = mixer_of(am)
        if set(am.peft.base_model.active_adapters) != {GLOBAL, PERSONAL} or not mix.armed:
            activate_both(am, trainable=PERSONAL)
            mix.constant(1.0 - local_weight, local_weight, detach_global=True)
        return objective(am, batch)

    return run


# ---------------------------------------------------------------------------- the method


@register(FedDPASettings)
class FedDPA(PersonalThenGlobal):
    name = "feddpa"

    def personal_objective(self, ctx: ClientContext, global_state: AdapterState) -> Objective:
        return under_training_mix(task_objective, self.settings.local_weight)

    def personal_step(self, ctx: ClientContext, global_state: AdapterState, round_: int):
        try:
            return super().personal_step(ctx, global_state, round_)
        finally:
            mixer_of(ctx.am).disarm()

    def personal_job(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> SlotJob:
        """P's rows run under ``a P(x) + (1 - a) detach(G(x))`` with G the received adapter (the fixed one)."""
        job = super().personal_job(ctx, global_state, round_)
        a = self.settings.local_weight
        job.own_weight, job.fixed_weight = a, 1.0 - a
        return job

    def eval_uses_training_data(self, kind: str) -> bool:
        return kind == "personal" and self.settings.mix == "instance"

    def setup_eval(self, ctx: ClientContext, kind: str, global_state: AdapterState) -> None:
        if kind != "personal":
            super().setup_eval(ctx, kind, global_state)
            return
        c = self.settings
        arm_personal_mix(
            ctx, global_state, self.starting_personal(ctx.state, global_state), c.mix, c.fixed_weight,
            c.num_instances, c.sim_scale, c.instance_weight_on, c.similarity_features, c.clip,
        )

    def eval_model(self, ctx: ClientContext, kind: str, global_state: AdapterState) -> SlotModel | None:
        if kind != "personal":
            return super().eval_model(ctx, kind, global_state)
        c = self.settings
        return personal_mix_model(
            ctx, global_state, self.starting_personal(ctx.state, global_state), c.mix, c.fixed_weight,
            c.num_instances, c.sim_scale, c.instance_weight_on, c.similarity_features, c.clip,
        )
