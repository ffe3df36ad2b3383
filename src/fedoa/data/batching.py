"""Micro-batches for training: right-padded ids and the positions that carry the loss."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from fedoa.data.prompts import Encoded


@dataclass
class Batch:
    """A right-padded micro-batch.

    ``loss_rows``/``loss_cols`` index the positions whose next token is a response token, and
    ``targets`` holds those next tokens: the LM head runs on these positions only.
    ``last`` is the index of each row's last real token, ``answer`` the index of its last prompt
    token (the position whose hidden state the LM head reads to predict the answer).
    ``ids`` are the examples' indices in the client's training list (keys of feature caches).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_rows: torch.Tensor
    loss_cols: torch.Tensor
    targets: torch.Tensor
    last: torch.Tensor
    answer: torch.Tensor
    ids: torch.Tensor

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def collate(examples: list[Encoded], ids: list[int], pad_id: int) -> Batch:
    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    rows, cols, targets, last, answer = [], [], [], [], []
    for i, e in enumerate(examples):
        seq = e.prompt + e.response
        input_ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        start = len(e.prompt) - 1  # this position predicts the first response token
        for k in range(len(e.response)):
            rows.append(i)
            cols.append(start + k)
            targets.append(e.response[k])
        last.append(len(seq) - 1)
        answer.append(start)
    return Batch(
        input_ids,
        mask,
        torch.tensor(rows),
        torch.tensor(cols),
        torch.tensor(targets),
        torch.tensor(last),
        torch.tensor(answer),
        torch.tensor(ids),
    )


def epoch_batches(lengths: list[int], batch_size: int, seed_text: str, window: int = 8) -> list[list[int]]:
    """Shuffled batches of example indices with little padding.

    Examples are shuffled, then sorted by length inside windows of ``window`` batches, cut into
    batches, and the batches shuffled again: batches stay random, padding (wasted compute) drops.
    """
    rng = random.Random(seed_text)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * max(1, window)
    batches = []
    for s in range(0, len(order), span):
        chunk = sorted(order[s : s + span], key=lambda i: lengths[i])
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def iterate_batches(examples: list[Encoded], order: list[int], micro_batch_size: int, pad_id: int):
    """Micro-batches in the given order (the last one may be smaller)."""
    for s in range(0, len(order), micro_batch_size):
        idx = order[s : s + micro_batch_size]
        yield collate([examples[i] for i in idx], idx, pad_id)
