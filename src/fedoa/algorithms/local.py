"""Local-only training: each client trains a personal adapter on its own data; no federation.

The standard lower reference of personalized FL (e.g. Li et al., "Ditto: Fair and Robust
Federated Learning Through Personalization", ICML 2021, Table 2 "Local"; named as a baseline in
the FedOA paper, arXiv 2505.01075).

Every sampled client trains its personal adapter P on the plain task loss, from round 1 on, and
uploads nothing (``ClientUpdate.state = None``; zero communication). The global adapter is never
trained; only the personal models are evaluated.

P's update is the same as FedOA's personal step with ``fedoa.regular_weight = 0`` (same init,
seeds and batches): the two produce identical tensors when FedOA's personal step runs in the
same rounds (``fed.personal_start_round = 1``).

Deviations / choices: ``fed.personal_start_round`` and ``fed.personal_init`` do not apply (there
is no global adapter to wait for or copy); "rounds" only set how many local updates P gets, and
``fed.client_fraction`` still samples which clients train in a round.
"""
from __future__ import annotations

from fedoa.algorithms.base import Algorithm, ClientContext, ClientUpdate, Phase
from fedoa.model.adapters import PERSONAL, AdapterState
from fedoa.model.slots import SlotModel
from fedoa.registry import register
from fedoa.training.joint import SlotJob
from fedoa.training.loop import train_slot
from fedoa.training.losses import task_objective


@register()
class Local(Algorithm):
    name = "local"
    evaluated = ("personal",)
    federated = False

    def client_update(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> ClientUpdate:
        am = ctx.am
        am.set(PERSONAL, ctx.state[PERSONAL])
        result = train_slot(
            am, PERSONAL, ctx.train, self.cfg.train, task_objective,
            ctx.seed_text(round_, "personal"), ctx.pad_id, ctx.progress,
        )
        ctx.state[PERSONAL] = am.get(PERSONAL)
        return ClientUpdate(ctx.name, None, len(ctx.train), [Phase.of("personal", result)])

    def client_jobs(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> list[SlotJob]:
        return [SlotJob("personal", ctx.state[PERSONAL], ctx.train, ctx.seed_text(round_, "personal"))]

    def finish_jobs(self, ctx: ClientContext, global_state: AdapterState, round_: int,
                    done: dict[str, tuple[AdapterState, Phase]]) -> ClientUpdate:
        ctx.state[PERSONAL], phase = done["personal"]
        return ClientUpdate(ctx.name, None, len(ctx.train), [phase])

    def setup_eval(self, ctx: ClientContext, kind: str, global_state: AdapterState) -> None:
        if kind != "personal":
            raise ValueError(f"{self.name} does not evaluate {kind!r}")
        ctx.am.set(PERSONAL, ctx.state[PERSONAL])
        ctx.am.use(PERSONAL)

    def eval_model(self, ctx: ClientContext, kind: str, global_state: AdapterState) -> SlotModel | None:
        if kind != "personal":
            raise ValueError(f"{self.name} does not evaluate {kind!r}")
        return SlotModel(ctx.state[PERSONAL])
