"""Losses on a micro-batch: next-token cross-entropy on response tokens, and features h(x)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fedoa.data.batching import Batch
from fedoa.model.adapters import AdapterModel


def response_loss(am: AdapterModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over response tokens, and the final hidden states.

    The LM head runs only at the positions that predict a response token: for classification
    prompts that is a few positions out of hundreds, and the head is the model's widest matmul.
    """
    hidden = am.hidden(batch.input_ids, batch.attention_mask)
    logits = am.logits(hidden[batch.loss_rows, batch.loss_cols]).float()
    return F.cross_entropy(logits, batch.targets), hidden


def features(hidden: torch.Tensor, batch: Batch, kind: str) -> torch.Tensor:
    """h(x) per example: the final hidden state at the last real token (``last_token``), at the
    last prompt token (``answer``: what the LM head reads to predict the answer), or the mean
    over real tokens (``mean``)."""
    if kind in ("last_token", "answer"):
        pos = batch.last if kind == "last_token" else batch.answer
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), pos]
    if kind == "mean":
        mask = batch.attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    raise ValueError(f"unknown feature kind {kind!r}")


def task_objective(am: AdapterModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """The plain task loss (the global step of FedOA, FedIT's local step ...)."""
    loss, _ = response_loss(am, batch)
    return loss, {"task_loss": loss.item()}


@torch.no_grad()
def example_features(
    am: AdapterModel, slot: str | None, examples: list, kind: str, batch_size: int, pad_id: int
) -> torch.Tensor:
    """h(x) of every training example under ``slot``, in example order, without dropout.

    Computed once per local update: the received global adapter does not change during the
    personal step, so recomputing it per step and epoch (as the reference does) is wasted work.
    Batches are cut from the examples sorted by length (right padding: a row's features do not
    depend on its neighbours), which spares ~20% of the padded tokens of arbitrary batches.
    """
    from fedoa.data.batching import iterate_batches

    am.use(slot)
    am.peft.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    out = []
    for batch in iterate_batches(examples, order, batch_size, pad_id):
        batch = batch.to(am.device)
        out.append(features(am.hidden(batch.input_ids, batch.attention_mask), batch, kind))
    return torch.cat(out)[torch.tensor(order).argsort()]
