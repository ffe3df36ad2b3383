"""Accuracy of the currently active model on one test set.

- Option scoring: the option with the highest total log-likelihood after the prompt wins. The
  prompt's forward pass is shared by all its options through the KV cache: one batched pass over
  the prompts scores every option's first token; only options longer than one token need a
  second, short pass over their remaining tokens.
- Generation: greedy decoding, exact match after normalization.
- The reference's generation scoring (beam search, ROUGE): :mod:`fedoa.evaluation.rouge`.
"""
from __future__ import annotations

import contextlib
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from fedoa.data.prompts import PromptEncoder
from fedoa.data.records import Record
from fedoa.model.adapters import AdapterModel
from fedoa.model.mixing import CONTINUATION_ROWS


@dataclass
class PreparedSet:
    """A test set tokenized once, reused by every model that is evaluated on it."""

    name: str
    records: list[Record]
    prompts: list[tuple[int, ...]]
    options: list[list[tuple[int, ...]]]
    answers: list[int]  # index of the correct option, -1 when the record has no options
    truncated: int = 0  # prompts cut to fit model.max_length

    def __len__(self) -> int:
        return len(self.records)

    def head(self, n: int | None) -> "PreparedSet":
        """The first ``n`` records (all when ``n`` is None or not smaller)."""
        if n is None or n >= len(self):
            return self
        return PreparedSet(self.name, self.records[:n], self.prompts[:n], self.options[:n], self.answers[:n])


def prepare_set(encoder: PromptEncoder, name: str, records: list[Record]) -> PreparedSet:
    before = encoder.truncated
    prompts, options, answers = [], [], []
    for r in records:
        opts = [encoder.answer_ids(o) for o in r.options]
        reserve = max((len(o) for o in opts), default=0)
        prompts.append(encoder.encode_prompt(r, reserve=reserve))
        options.append(opts)
        stripped = [o.strip() for o in r.options]
        answers.append(stripped.index(r.output.strip()) if r.output.strip() in stripped else -1)
    return PreparedSet(name, records, prompts, options, answers, encoder.truncated - before)


def left_pad(seqs: list[tuple[int, ...]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
    return ids, mask


def _right_pad(seqs: list[tuple[int, ...]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
    return ids, mask


@contextlib.contextmanager
def continuing(rows: torch.Tensor | None):
    """The forward passes inside run over these prompt rows (None: every row, the prompt pass):
    an armed adapter mix re-indexes its per-row weights with them."""
    if rows is None:
        yield
        return
    token = CONTINUATION_ROWS.set(rows)
    try:
        yield
    finally:
        CONTINUATION_ROWS.reset(token)


#: ``engage(rows)``: a context for forward passes over prompt rows ``rows`` (None: all of them)
Engage = Callable[[torch.Tensor | None], contextlib.AbstractContextManager]


@torch.no_grad()
def option_scores(
    am: AdapterModel, prompts: list[tuple[int, ...]], options: list[list[tuple[int, ...]]], pad_id: int,
    engage: Engage = continuing,
) -> list[list[float]]:
    """Sum of log-probabilities of each option's tokens after its prompt (one batch of prompts).
    ``engage`` wraps each forward pass with the rows it computes (batched evaluation routes each
    row to its model's slot there)."""
    device = am.device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with engage(None):
        hidden, cache = am.forward_with_cache(ids, mask, positions)
    first = torch.log_softmax(am.logits(hidden[:, -1]).float(), dim=-1)
    scores = [[first[b, o[0]].item() if o else 0.0 for o in opts] for b, opts in enumerate(options)]

    # The rest of multi-token options: feed option[:-1] after the cached prompt.
    pairs = [(b, k) for b, opts in enumerate(options) for k, o in enumerate(opts) if len(o) > 1]
    if not pairs:
        return scores
    layers = [(layer.keys, layer.values) for layer in cache.layers]
    chunk = max(1, len(prompts))
    for s in range(0, len(pairs), chunk):
        part = pairs[s : s + chunk]
        rows = torch.tensor([b for b, _ in part], device=device)
        conts = [options[b][k][:-1] for b, k in part]
        cont_ids, cont_mask = _right_pad(conts, pad_id)
        cont_ids, cont_mask = cont_ids.to(device), cont_mask.to(device)
        past = DynamicCache(ddp_cache_data=[(k[rows], v[rows]) for k, v in layers], config=am.base.config)
        full_mask = torch.cat([mask[rows], cont_mask], dim=1)
        cont_pos = mask[rows].sum(-1, keepdim=True) + torch.arange(cont_ids.shape[1], device=device)
        with engage(rows):
            h, _ = am.forward_with_cache(cont_ids, full_mask, cont_pos, past)
        logp = torch.log_softmax(am.logits(h).float(), dim=-1)
        for i, (b, k) in enumerate(part):
            tail = options[b][k][1:]
            tok = torch.tensor(tail, device=device)
            scores[b][k] += logp[i, torch.arange(len(tail), device=device), tok].sum().item()
    return scores


def _batches(order: list[int], prepared: PreparedSet, batch_size: int):
    for s in range(0, len(order), batch_size):
        yield order[s : s + batch_size]


def scored_batches(prepared: PreparedSet, batch_size: int):
    """The records with options in batches of ``batch_size``, sorted by prompt length (it keeps
    left padding, wasted compute, small)."""
    order = sorted((i for i in range(len(prepared)) if prepared.options[i]), key=lambda i: len(prepared.prompts[i]))
    return _batches(order, prepared, batch_size)


def best_option(scores: list[float]) -> int:
    return max(range(len(scores)), key=lambda k: scores[k])


def option_predictions(am: AdapterModel, prepared: PreparedSet, batch_size: int, pad_id: int) -> list[int]:
    """Index of the best-scoring option per record (-1 for records without options)."""
    preds = [-1] * len(prepared)
    for idx in scored_batches(prepared, batch_size):
        scores = option_scores(am, [prepared.prompts[i] for i in idx], [prepared.options[i] for i in idx], pad_id)
        for i, sc in zip(idx, scores):
            preds[i] = best_option(sc)
    return preds


_PUNCT = string.punctuation + " \t\n"


def normalize_answer(text: str) -> str:
    """Lower-case, first line only, outer punctuation and inner runs of spaces removed."""
    text = text.strip().split("\n", 1)[0] if text.strip() else ""
    return re.sub(r"\s+", " ", text.lower()).strip(_PUNCT)


@torch.no_grad()
def generations(
    am: AdapterModel, prepared: PreparedSet, batch_size: int, pad_id: int, max_new_tokens: int, eos_id: int,
    num_beams: int = 1,
) -> list[list[int]]:
    """Generated token ids per record, greedy or by beam search (the caller decodes them)."""
    order = sorted(range(len(prepared)), key=lambda i: len(prepared.prompts[i]))
    out: list[list[int]] = [[] for _ in range(len(prepared))]
    for idx in _batches(order, prepared, batch_size):
        ids, mask = left_pad([prepared.prompts[i] for i in idx], pad_id)
        gen = am.generate(
            input_ids=ids.to(am.device),
            attention_mask=mask.to(am.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=num_beams,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )
        for i, row in zip(idx, gen[:, ids.shape[1]:].tolist()):
            out[i] = row
    return out


def option_hits(prepared: PreparedSet, preds: list[int]) -> list[int]:
    """1 right, 0 wrong, -1 for a record without options."""
    return [-1 if a < 0 else int(p == a) for p, a in zip(preds, prepared.answers)]


def generation_hits(prepared: PreparedSet, texts: list[str]) -> list[int]:
    return [int(normalize_answer(t) == normalize_answer(r.output)) for t, r in zip(texts, prepared.records)]


def accuracy_of(hits: list[int]) -> float:
    scored = [h for h in hits if h >= 0]
    return sum(scored) / len(scored) if scored else float("nan")
