"""Centralized: one LoRA adapter trained on the pooled training data of all clients.

The upper reference without privacy named by the FedOA paper (arXiv 2505.01075, "Centralized:
one LoRA on the pooled data of all clients").

Every round one trainer ("pooled") trains the global adapter on the union of *all* clients'
training data (``training_groups`` returns ``{"pooled": every client}``, whatever
``fed.client_fraction`` samples) with the plain task loss; its result is the new global adapter
(no averaging). Every client's model is that adapter: ``evaluated = ("global",)``.

Communication is reported as 0 bytes (``federated = False``): no adapter travels, because the
method needs the raw data moved to one place instead — which is what the other methods avoid.

Deviations / choices: a "round" is one local update over the pool (``train.epochs`` passes,
capped by ``train.max_steps``), so ``fed.rounds`` times that is the whole training; with a
step cap the pool sees fewer examples per round than all clients together would. Batches mix
clients (shuffled over the pool). The in-process runtime honours ``training_groups``; a Flower
deployment has no place where the pooled data could live, so it does not.
"""
from __future__ import annotations

from fedoa.algorithms.base import ClientUpdate
from fedoa.algorithms.fedit import FedIT
from fedoa.model.adapters import AdapterState
from fedoa.registry import register

POOL = "pooled"


@register()
class Centralized(FedIT):
    name = "centralized"
    evaluated = ("global",)
    federated = False

    def training_groups(self, sampled: list[str], clients: list[str]) -> dict[str, list[str]]:
        return {POOL: sorted(clients)}

    def aggregate(self, updates: list[ClientUpdate], global_state: AdapterState, round_: int) -> AdapterState:
        ups = [u for u in updates if u.state is not None]
        if len(ups) != 1:
            raise RuntimeError(f"centralized expects one pooled update per round, got {len(ups)}")
        return ups[0].state
