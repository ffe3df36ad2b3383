"""The local training loop: plain PyTorch, one optimizer per local update, no Trainer.

An *objective* maps a micro-batch to ``(loss, parts)``; methods differ only in their objective,
so FedOA, Ditto, FedProx ... all share this loop.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fedoa.config import TrainConfig
from fedoa.data.batching import Batch, epoch_batches, iterate_batches
from fedoa.data.prompts import Encoded
from fedoa.errors import FedoaError
from fedoa.model.adapters import AdapterModel
from fedoa.seeding import derive_seed

Objective = Callable[[AdapterModel, Batch], tuple[torch.Tensor, dict[str, float]]]

#: the words of the error a diverged local update raises (the driver stops the run on it)
NON_FINITE = "non-finite training loss"


class NonFiniteLoss(FedoaError):
    """The loss became NaN or infinite: nothing trained from here on can be trusted. Exit 1."""

    exit_code = 1


@dataclass
class LocalResult:
    """What one local update did: averages over its micro-batches."""

    steps: int = 0
    examples: int = 0
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    #: the same averages over the first and over the last optimizer step only
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)


def planned_steps(num_examples: int, cfg: TrainConfig) -> int:
    steps = cfg.epochs * math.ceil(num_examples / cfg.batch_size)
    return min(steps, cfg.max_steps) if cfg.max_steps > 0 else steps


def lr_factor(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def optimizer_step(opt, sched, params, max_grad_norm: float) -> None:
    """Clip (if asked), step the optimizer and its schedule, and drop the gradients."""
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def train_slot(
    am: AdapterModel,
    slot: str,
    examples: list[Encoded],
    cfg: TrainConfig,
    objective: Objective,
    seed_text: str,
    pad_id: int,
    progress: Callable[[int], None] | None = None,
) -> LocalResult:
    """Train the adapter in ``slot`` on ``examples``; every other slot stays frozen.

    ``seed_text`` fixes the batch order and the dropout stream, so a client update is the same
    in the in-process runtime and on a Flower node.
    """
    start = time.perf_counter()
    am.use(slot)
    params = am.trainable(slot)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = planned_steps(len(examples), cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg.schedule, cfg.warmup_steps, total))
    torch.manual_seed(derive_seed(seed_text))
    result = LocalResult()
    sums: dict[str, float] = {}
    micro_batches = 0
    am.peft.train()
    try:
        step = 0
        lengths = [len(e) for e in examples]
        for epoch in range(cfg.epochs):
            for step_idx in epoch_batches(lengths, cfg.batch_size, f"{seed_text}:epoch{epoch}"):
                if step >= total:
                    break
                step_sums: dict[str, float] = {}
                for batch in iterate_batches(examples, step_idx, cfg.micro_batch_size, pad_id):
                    batch = batch.to(am.device)
                    loss, parts = objective(am, batch)
                    if not torch.isfinite(loss):
                        raise NonFiniteLoss(f"{NON_FINITE} ({loss.item()}) at step {step + 1} of {seed_text}: "
                                            "lower train.lr or set train.max_grad_norm; nothing was published")
                    (loss * (batch.size / len(step_idx))).backward()
                    for k, v in parts.items():
                        sums[k] = sums.get(k, 0.0) + v
                        step_sums[k] = step_sums.get(k, 0.0) + v
                    micro_batches += 1
                optimizer_step(opt, sched, params, cfg.max_grad_norm)
                result.last = {k: v / math.ceil(len(step_idx) / cfg.micro_batch_size) for k, v in step_sums.items()}
                if step == 0:
                    result.first = result.last
                step += 1
                result.examples += len(step_idx)
                if progress:
                    progress(1)
    finally:
        am.peft.eval()
        am.freeze()
    result.steps = step
    result.metrics = {k: v / max(1, micro_batches) for k, v in sums.items()}
    result.seconds = time.perf_counter() - start
    return result
