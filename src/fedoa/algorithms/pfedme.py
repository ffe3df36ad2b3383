"""pFedMe: personalization through Moreau envelopes, on LoRA adapters.

Dinh, Tran, Nguyen. "Personalized Federated Learning with Moreau Envelopes", NeurIPS 2020.

Each client keeps a local model ``w`` and a personalized model ``theta``. For every local batch:
1. ``theta`` approximately solves ``min_theta f(theta; batch) + lambda/2 * ||theta - w||^2``
   with K optimizer steps (warm-started from the previous ``theta``);
2. the local model moves toward it: ``w <- w - eta * lambda * (w - theta)``.
After the local update the client uploads ``w``; the server sets
``w_global <- (1 - beta) * w_global + beta * mean(uploads)`` (``beta = 1``: FedAvg).
The personalized model ``theta`` is the client's personal adapter (evaluated as "personal"),
``w_global`` the global one.

Adaptation to LoRA and our loop (deviations):
- ``w`` and ``theta`` are LoRA adapter states (every A and B matrix); distances are between LoRA
  factors, not effective weight updates ``B @ A``.
- The inner solver is our AdamW (``train.lr``, ``train.weight_decay``, gradient accumulation,
  the ``train.schedule`` over all K * steps optimizer steps, optional clipping), not the paper's
  plain gradient steps with a separate personal learning rate: plain SGD barely moves LoRA
  factors at the learning rates LoRA needs. The optimizer state lives for one client update.
- ``theta`` starts each client update from the received global adapter (as the authors' code
  resets both models to the global one at the start of a round) and is warm-started across the
  update's batches; after the update it is stored as the client's personal adapter. It is not
  trained in rounds where the client is not sampled.
- The K inner steps reuse the same batch (the paper samples one batch per local round and solves
  the inner problem on it); ``planned_steps`` (epochs / max_steps) counts outer batches.
- ``fed.personal_start_round`` and ``fed.personal_init`` do not apply: theta is derived from w
  every round by construction.
"""
from __future__ import annotations

import time

import torch
from pydantic import model_validator

from fedoa.algorithms.base import Algorithm, ClientContext, ClientUpdate, Phase
from fedoa.algorithms.fedprox import squared_distance
from fedoa.config import Section, need, setting
from fedoa.data.batching import epoch_batches, iterate_batches
from fedoa.model.adapters import PERSONAL, AdapterState
from fedoa.registry import register
from fedoa.seeding import derive_seed
from fedoa.training.loop import LocalResult, lr_factor, optimizer_step, planned_steps
from fedoa.training.losses import response_loss


class PFedMeSettings(Section):
    """pFedMe: the Moreau envelope and the server's mixing."""

    lam: float = setting(15.0, "lambda: weight of the Moreau-envelope term lambda/2 * ||theta - w||^2.", gt=0)
    inner_steps: int = setting(5, "K: optimizer steps on the personal adapter theta per batch (approximate inner solve).", ge=1)
    eta: float = setting(
        0.005,
        "eta: rate of the local-model update w <- w - eta * lambda * (w - theta) after each batch; eta * lambda "
        "must lie in (0, 1].",
        gt=0,
    )
    beta: float = setting(1.0, "beta: server mixing w <- (1 - beta) * w + beta * mean(uploads); 1 = FedAvg.", gt=0)

    @model_validator(mode="after")
    def _pull_rate(self) -> "PFedMeSettings":
        need(self.eta * self.lam <= 1, "pfedme.eta", "eta * lam must be <= 1 (w moves toward theta)")
        return self


@torch.no_grad()
def moreau_pull(w: dict[str, torch.Tensor], theta: dict[str, torch.Tensor], rate: float) -> None:
    """In place: ``w <- w - rate * (w - theta)`` with ``rate = eta * lambda``."""
    for k, t in w.items():
        t.sub_((t - theta[k]).mul_(rate))


def server_mix(previous: AdapterState, average: AdapterState, beta: float) -> AdapterState:
    """``(1 - beta) * previous + beta * average`` key by key (float64 accumulation)."""
    out: AdapterState = {}
    for k, prev in previous.items():
        mixed = (1.0 - beta) * prev.to(torch.float64) + beta * average[k].to(torch.float64)
        out[k] = mixed.to(prev.dtype)
    return out


@register(PFedMeSettings)
class PFedMe(Algorithm):
    name = "pfedme"

    def local_update(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> tuple[LocalResult, AdapterState]:
        """The client's pFedMe update; ``theta`` ends in the PERSONAL slot, ``w`` is returned."""
        cfg, pc, am = self.cfg.train, self.settings, ctx.am
        start = time.perf_counter()
        seed_text = ctx.seed_text(round_, "pfedme")
        am.set(PERSONAL, global_state)  # theta starts at the received w
        am.use(PERSONAL)
        params = am.trainable(PERSONAL)
        theta = am.params[PERSONAL]
        w = {k: global_state[k].detach().to(device=p.device, dtype=p.dtype).clone() for k, p in theta.items()}
        total = planned_steps(len(ctx.train), cfg)
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_factor(cfg.schedule, cfg.warmup_steps, total * pc.inner_steps)
        )
        torch.manual_seed(derive_seed(seed_text))
        result = LocalResult()
        sums = {"task_loss": 0.0, "prox": 0.0}
        micro_batches = 0
        lengths = [len(e) for e in ctx.train]
        am.peft.train()
        try:
            step = 0
            for epoch in range(cfg.epochs):
                for idx in epoch_batches(lengths, cfg.batch_size, f"{seed_text}:epoch{epoch}"):
                    if step >= total:
                        break
                    micro = [b.to(am.device) for b in iterate_batches(ctx.train, idx, cfg.micro_batch_size, ctx.pad_id)]
                    for _ in range(pc.inner_steps):  # theta ~ argmin f(theta) + lam/2 ||theta - w||^2
                        for batch in micro:
                            loss, _ = response_loss(am, batch)
                            prox = squared_distance(theta, w)
                            ((loss + 0.5 * pc.lam * prox) * (batch.size / len(idx))).backward()
                            sums["task_loss"] += loss.item()
                            sums["prox"] += prox.item()
                            micro_batches += 1
                        optimizer_step(opt, sched, params, cfg.max_grad_norm)
                        if ctx.progress:
                            ctx.progress(1)
                    moreau_pull(w, theta, pc.eta * pc.lam)
                    step += 1
                    result.examples += len(idx)
        finally:
            am.peft.eval()
            am.freeze()
        result.steps = step * pc.inner_steps
        result.metrics = {k: v / max(1, micro_batches) for k, v in sums.items()}
        result.seconds = time.perf_counter() - start
        return result, {k: t.to("cpu", dtype=global_state[k].dtype, copy=True) for k, t in w.items()}

    def client_update(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> ClientUpdate:
        result, w = self.local_update(ctx, global_state, round_)
        ctx.state[PERSONAL] = ctx.am.get(PERSONAL)
        return ClientUpdate(ctx.name, w, len(ctx.train), [Phase.of("pfedme", result)])

    def aggregate(self, updates: list[ClientUpdate], global_state: AdapterState, round_: int) -> AdapterState:
        average = super().aggregate(updates, global_state, round_)
        beta = self.settings.beta
        if beta == 1.0 or average is global_state:
            return average
        return server_mix(global_state, average, beta)

    def local_steps(self, num_examples: int, round_: int) -> int:
        return planned_steps(num_examples, self.cfg.train) * self.settings.inner_steps
