"""PerAda: a personal adapter pulled toward the global one; the server distils the clients' adapters.

Xie, Huang, Chu, Xu, Xiao, Li, Anandkumar. "PerAda: Parameter-Efficient Federated Learning
Personalization with Generalization Guarantees", CVPR 2024 (arXiv 2302.06637, 2023); reference
code NVlabs/PerAda (read 2026-12-05: optim/our.py, aggregation/distillation.py).

Per round a sampled client (1) trains its personal adapter P on
``CE(y | x; base + P) + lam * ||P - G||^2`` with G the global adapter it received (fixed during the
step; the code's ``lmbda * ||v - w||^2``), then (2) trains the received G on the task loss and
uploads it. The server averages the uploads (``fed.aggregation``) into the student, then distils
the ensemble of the uploaded adapters into it on an unlabeled server-side pool: ``kd_steps`` Adam
steps (``kd_lr``, cosine decay) of ``KL(softmax(mean_k t_k / T) || softmax(s / T))`` (batch mean),
teachers ``t_k`` = logits of base + each uploaded adapter (their *logits* averaged, as the code
does), student ``s`` = base + the averaged adapter. Evaluated: "personal" (P alone) and "global".

Adaptations to LoRA on a frozen LLM (each a choice, see docs/method.md):
- adapters are LoRA (q/v by default) instead of residual adapters in a ResNet/ViT; the proximal
  term runs over every LoRA A and B matrix, with a real gradient;
- the distilled output is the next-token distribution at the last prompt token (where an answer
  starts), the LLM's analogue of a classifier's logits; prompts carry no answer;
- the pool (``perada.pool``, :mod:`fedoa.data.pool`): ``unused_train``, the clients' task training
  records that no client holds, answers dropped (closer to the clients' data than the paper's
  CIFAR-100 pool for CIFAR-10 clients), or a JSONL ``file``; ``none`` is PerAda without
  distillation (the code's ``perada-nokd``);
- no early stopping or model selection on a labeled server validation set (the code keeps the
  best student by validation accuracy, or the averaged one when none beats it): there is no
  labeled server data, so the last student is kept when its KL on the pool is below the averaged
  adapter's, else the averaged adapter (``kept`` in metrics.jsonl); the default budget (16 steps of 8 prompts) is sized for a CPU, the
  code's CIFAR-10 run takes 500 steps of 2048 images in the first 30 of 200 rounds
  (``kd_rounds``);
- teachers are scored without dropout, the student trains with LoRA dropout (``model.train()``
  as in the code); the optimizer is the shared loop's AdamW with weight decay 0 (= Adam);
- ``schedule = "paper"`` (default): P trains every round from round 1 and starts as a copy of
  the G it first receives (the code: ``v = deepcopy(w)``); ``"fed"``: P follows
  ``fed.personal_start_round`` / ``fed.personal_init`` like ditto and fedoa;
- local training uses the shared loop (AdamW, ``train`` settings) for both adapters instead of
  SGD; DP-FedAvg is refused with distillation (the teachers are the raw uploads);
- in-process only with distillation: the Flower server does not run it (docs/deployment.md).
"""
from __future__ import annotations

import time
from typing import Literal

import torch
import torch.nn.functional as F

from fedoa.algorithms.base import (
    ClientContext,
    ClientUpdate,
    ServerContext,
    is_untrained,
)
from fedoa.algorithms.fedprox import device_copy, with_proximal
from fedoa.algorithms.personalized import PersonalThenGlobal
from fedoa.config import RunConfig, Section, TrainConfig, setting
from fedoa.data.batching import Batch, iterate_batches
from fedoa.data.pool import unlabeled_pool
from fedoa.data.prompts import Encoded
from fedoa.errors import ConfigError
from fedoa.model.adapters import GLOBAL, PERSONAL, AdapterModel, AdapterState
from fedoa.model.mixing import mixer_off
from fedoa.registry import register
from fedoa.seeding import seed_text
from fedoa.training.joint import SlotJob
from fedoa.training.loop import Objective, train_slot
from fedoa.training.losses import task_objective


class PerAdaSettings(Section):
    """PerAda: the personal adapter's proximal pull and the server's distillation."""

    lam: float = setting(1.0, "lambda of the personal objective CE + lambda * ||P - G||^2 (the code's CIFAR-10 run: 1).",
                         ge=0)
    schedule: Literal["paper", "fed"] = setting(
        "paper", "'paper': P trains every round from round 1, starting as a copy of the received G; 'fed': P follows "
        "fed.personal_start_round and fed.personal_init (as ditto and fedoa).")
    pool: Literal["unused_train", "file", "none"] = setting(
        "unused_train", "The server's unlabeled pool: training prompts of the clients' tasks that no client holds "
        "(answers dropped), the prompts of pool_path, or 'none' (no distillation: FedAvg).")
    pool_path: str = setting("", "JSONL file (or folder of them) of the 'file' pool: each line's instruction.")
    pool_size: int = setting(128, "Prompts drawn for the pool (seeded by data.split_seed; 0: all).", ge=0)
    kd_steps: int = setting(16, "Distillation steps per round (the code's CIFAR-10 run: 500).", ge=1)
    kd_batch_size: int = setting(8, "Pool prompts per distillation step (the code's CIFAR-10 run: 2048).", ge=1)
    kd_lr: float = setting(1e-3, "Peak learning rate of the distillation (cosine decay to 0; the code: 1e-3).", gt=0)
    temperature: float = setting(1.0, "Softmax temperature T of the distillation KL (the code: 1).", gt=0)
    kd_rounds: int = setting(0, "Distil in the first kd_rounds rounds only (0: every round; the code: 30 of 200).",
                             ge=0)


def kl_to_teacher(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(softmax(teacher / T) || softmax(student / T))``, summed over the vocabulary, mean over rows."""
    return F.kl_div(F.log_softmax(student / temperature, -1), F.softmax(teacher / temperature, -1),
                    reduction="batchmean")


def answer_logits(am: AdapterModel, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Float32 logits of the next token at each row's last prompt token."""
    return am.logits(hidden[torch.arange(batch.size, device=hidden.device), batch.answer]).float()


@torch.no_grad()
def pool_logits(am: AdapterModel, slot: str, pool: list[Encoded], batch_size: int, pad_id: int) -> torch.Tensor:
    """``[n, vocab]`` answer-position logits of every pool prompt under ``slot``, without dropout."""
    am.use(slot)
    am.peft.eval()
    out = []
    for batch in iterate_batches(pool, list(range(len(pool))), batch_size, pad_id):
        batch = batch.to(am.device)
        out.append(answer_logits(am, am.hidden(batch.input_ids, batch.attention_mask), batch))
    return torch.cat(out)


def distillation(teacher: torch.Tensor, temperature: float) -> Objective:
    """The student's KL to the teachers' mean logits (rows of ``teacher`` by pool index)."""

    def objective(am: AdapterModel, batch: Batch):
        student = answer_logits(am, am.hidden(batch.input_ids, batch.attention_mask), batch)
        loss = kl_to_teacher(student, teacher[batch.ids.to(teacher.device)], temperature)
        return loss, {"kd_kl": loss.item()}

    return objective


@register(PerAdaSettings)
class PerAda(PersonalThenGlobal):
    name = "perada"
    personal_schedule = False  # its own schedule unless perada.schedule = "fed"

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        if self.settings.pool != "none" and cfg.dp.noise_multiplier > 0:
            raise ConfigError("PerAda's distillation reads every raw upload, which DP-FedAvg protects: set "
                              "perada.pool = 'none' or dp.noise_multiplier = 0", where="perada.pool")
        self.server: ServerContext | None = None
        self.pool: list[Encoded] = []
        self.logged: dict[int, dict] = {}

    # ------------------------------------------------------------------ client

    def personal_round(self, round_: int) -> bool:
        return self.settings.schedule == "paper" or super().personal_round(round_)

    def starting_personal(self, client_state, global_state: AdapterState) -> AdapterState:
        if self.settings.schedule == "fed":
            return super().starting_personal(client_state, global_state)
        personal = client_state[PERSONAL]
        return {k: v.clone() for k, v in global_state.items()} if is_untrained(personal) else personal

    def personal_objective(self, ctx: ClientContext, global_state: AdapterState) -> Objective:
        lam = self.settings.lam
        if lam == 0:
            return task_objective
        # with_proximal adds weight/2 * ||.||^2; PerAda's term is lam * ||.||^2
        return with_proximal(task_objective, PERSONAL, device_copy(global_state, ctx.am, PERSONAL), 2 * lam)

    def personal_job(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> SlotJob:
        job = super().personal_job(ctx, global_state, round_)
        job.prox, job.anchor = 2 * self.settings.lam, global_state  # lam * ||.||^2, as personal_objective
        return job

    # ------------------------------------------------------------------ server

    def needs_server_model(self) -> bool:
        return self.settings.pool != "none"

    def attach_server(self, server: ServerContext) -> None:
        c = self.settings
        if c.pool == "none":
            return
        prompts = unlabeled_pool(self.cfg, c.pool, c.pool_path, c.pool_size)
        self.server = server
        self.pool = [Encoded(server.encoder.prompt_ids(p), ()) for p in prompts]

    def distils(self, round_: int) -> bool:
        kd = self.settings.kd_rounds
        return self.server is not None and (kd == 0 or round_ <= kd)

    def aggregate(self, updates: list[ClientUpdate], global_state: AdapterState, round_: int) -> AdapterState:
        averaged = super().aggregate(updates, global_state, round_)
        teachers = [u.state for u in sorted(updates, key=lambda u: u.client) if u.state is not None]
        if not teachers or not self.distils(round_):
            return averaged
        return self.distil(teachers, averaged, round_)

    def distil(self, teachers: list[AdapterState], student: AdapterState, round_: int) -> AdapterState:
        """The averaged adapter after ``kd_steps`` of distillation from ``teachers`` on the pool."""
        c, s = self.settings, self.server
        am, micro = s.am, self.cfg.train.micro_batch_size
        start = time.perf_counter()
        mixer_off(am)
        teacher = None
        for state in teachers:  # the ensemble: the mean of the teachers' logits (one [n, vocab] sum)
            am.set(PERSONAL, state)
            logits = pool_logits(am, PERSONAL, self.pool, micro, s.pad_id)
            teacher = logits if teacher is None else teacher.add_(logits)
        teacher /= len(teachers)
        am.set(GLOBAL, student)
        before = kl_to_teacher(pool_logits(am, GLOBAL, self.pool, micro, s.pad_id), teacher, c.temperature).item()
        budget = TrainConfig(lr=c.kd_lr, epochs=c.kd_steps, max_steps=c.kd_steps, batch_size=c.kd_batch_size,
                             micro_batch_size=min(micro, c.kd_batch_size), schedule="cosine")
        result = train_slot(am, GLOBAL, self.pool, budget, distillation(teacher, c.temperature),
                            seed_text(self.cfg.seed, round_, "server", "distill"), s.pad_id)
        after = kl_to_teacher(pool_logits(am, GLOBAL, self.pool, micro, s.pad_id), teacher, c.temperature).item()
        kept = after < before  # as the code keeps the averaged model when distillation did not help
        self.logged[round_] = {"phase": "distill", "kd_kl_before": before, "kd_kl_after": after,
                               "kept": "distilled" if kept else "averaged", "teachers": len(teachers),
                               "steps": result.steps, "examples": result.examples,
                               "seconds": round(time.perf_counter() - start, 3)}
        return am.get(GLOBAL) if kept else student

    def server_metrics(self, round_: int) -> list[dict]:
        line = self.logged.pop(round_, None)
        return [line] if line else []
