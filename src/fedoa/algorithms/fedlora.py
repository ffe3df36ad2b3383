"""FedLoRA: a private part and a shared low-rank adapter, trained in alternation; only the adapter travels.

Yi, Yu, Wang, Liu (and Li). "FedLoRA: Model-Heterogeneous Personalized Federated Learning with LoRA
Tuning", arXiv 2310.13283 (2023; v2 2024 as "pFedLoRA"). No reference code was read (none found).

In the paper each client holds a private, possibly heterogeneous local model and a small
homogeneous low-rank adapter inserted into it. Per round a sampled client (1) receives the global
adapter, freezes it and trains its private model (the adapter's knowledge flows into the private
part), (2) freezes the private model and trains the adapter (the private knowledge flows into
the adapter), and uploads the adapter only; the server averages the adapters (FedAvg). A client's
model is its private model with the adapter inserted.

Here every LoRA layer computes ``W0 x + P(x) + G(x)``: the private part is a personal LoRA
adapter P, the shared part the global LoRA adapter G (both slots active, outputs summed). Per
round a sampled client trains P with the received G frozen, then G with the new P frozen, both
under ``base + P + G`` on the task loss, and uploads G. Evaluated: "personal" (base + P + G, with
the final global G) and, with ``fedlora.global_eval``, "global" (base + G alone).

Adaptations to LoRA on a frozen LLM (each a choice, see docs/method.md):
- the private part is a LoRA adapter of the same rank on the same frozen base, not a whole
  heterogeneous model: model heterogeneity, the paper's motivation, is not exercised (every
  client shares the base model and the adapter shapes);
- the adapter sits on ``lora.target_modules`` (q/v by default), not on the fully connected layers
  of a CNN, and is a second LoRA next to the private one rather than a low-rank branch of it;
- the personal model uses the final aggregated G (what every client holds after the last round),
  not the client's own last local copy of the adapter;
- ``schedule = "paper"`` (default): both parts train in every round from round 1 and P starts as a
  fresh LoRA (B = 0: the first personal model is base + G); ``"fed"``: P follows
  ``fed.personal_start_round`` and ``fed.personal_init`` (a copy of G counts it twice in the sum);
- both steps use the shared loop (AdamW, the ``train`` settings, one epoch budget each) instead of
  the paper's SGD with separate learning rates for the two parts;
- exported adapters: ``personal/<client>`` is P alone and ``global`` is G; the personal model is
  both loaded as two PEFT adapters and activated together (docs/interop.md).
"""
from __future__ import annotations

from typing import Literal

from fedoa.algorithms.base import ClientContext, ClientState, ClientUpdate, Phase
from fedoa.algorithms.personalized import PersonalThenGlobal
from fedoa.config import Section, setting
from fedoa.data.batching import Batch
from fedoa.model.adapters import GLOBAL, PERSONAL, AdapterModel, AdapterState
from fedoa.model.mixing import activate_both, mixer_off
from fedoa.model.slots import SlotModel
from fedoa.registry import register
from fedoa.training.loop import Objective, train_slot
from fedoa.training.losses import task_objective


class FedLoRASettings(Section):
    """FedLoRA: the alternation's schedule and which models are evaluated."""

    schedule: Literal["paper", "fed"] = setting(
        "paper", "'paper': the private part P trains every round from round 1, starting as a fresh LoRA; 'fed': "
        "P follows fed.personal_start_round and fed.personal_init (as ditto and fedoa).")
    global_eval: bool = setting(True, "Also evaluate the shared adapter alone (base + G) as the 'global' model.")


def under_sum(objective: Objective, trainable: str) -> Objective:
    """``objective`` with both slots active (``W0 x + P(x) + G(x)``), only ``trainable`` learning."""

    def run(am: AdapterModel, batch: Batch):
        if set(am.peft.base_model.active_adapters) != {GLOBAL, PERSONAL}:
            activate_both(am, trainable=trainable)
        return objective(am, batch)

    return run


@register(FedLoRASettings)
class FedLoRA(PersonalThenGlobal):
    name = "fedlora"
    personal_schedule = False  # its own schedule unless fedlora.schedule = "fed"

    @property
    def evaluated(self) -> tuple[str, ...]:
        return ("personal", "global") if self.settings.global_eval else ("personal",)

    def personal_round(self, round_: int) -> bool:
        return self.settings.schedule == "paper" or super().personal_round(round_)

    def starting_personal(self, client_state: ClientState, global_state: AdapterState) -> AdapterState:
        if self.settings.schedule == "fed":
            return super().starting_personal(client_state, global_state)
        return client_state[PERSONAL]

    def client_update(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> ClientUpdate:
        am = ctx.am
        mixer_off(am)  # plain sum of the two slots' outputs
        am.set(GLOBAL, global_state)
        phases = []
        if self.personal_round(round_):  # (1) the private part, the received adapter frozen
            phases.append(self.personal_step(ctx, global_state, round_, under_sum(task_objective, PERSONAL)))
        am.set(PERSONAL, self.starting_personal(ctx.state, global_state))
        am.set(GLOBAL, global_state)  # (2) the adapter, the private part frozen
        result = train_slot(am, GLOBAL, ctx.train, self.cfg.train, under_sum(task_objective, GLOBAL),
                            ctx.seed_text(round_, "global"), ctx.pad_id, ctx.progress)
        return ClientUpdate(ctx.name, am.get(GLOBAL), len(ctx.train), phases + [Phase.of("global", result)])

    def setup_eval(self, ctx: ClientContext, kind: str, global_state: AdapterState) -> None:
        if kind != "personal":
            super().setup_eval(ctx, kind, global_state)
            return
        am = ctx.am
        mixer_off(am)
        am.set(GLOBAL, global_state)
        am.set(PERSONAL, self.starting_personal(ctx.state, global_state))
        activate_both(am)

    def eval_model(self, ctx: ClientContext, kind: str, global_state: AdapterState) -> SlotModel | None:
        """The personal model ``W0 x + P(x) + G(x)``: P in the row's slot, G the shared one."""
        if kind != "personal":
            return super().eval_model(ctx, kind, global_state)
        return SlotModel(self.starting_personal(ctx.state, global_state), 1.0, 1.0)
