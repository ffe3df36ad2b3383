"""FedSDR: FedOA's two-adapter structure with the FedSDR feature regularizer.

FedSDR is one of the baselines of the FedOA paper (Yang et al., arXiv 2505.01075, 2025); its
regularizer is taken from the project's method spec (the FedOA paper's description of its baselines):
``mean_i |h_P,i . |h_G,i - mean_j h_G,j||``. We have no primary FedSDR publication in our
material. The FedOA reference code has it (Lydia-yang/FedOA ``code/peft/peft_model.py``,
``regular_term == 'fedsdr'``, read 2026-12-07): the same formula on the last position's final hidden
state, added to the personal ("local") adapter's loss with ``regular_weight`` (0.5) in FedOA's
two-adapter schedule, which is what this module does; it was not run side by side with fedoa's.

The formula, as implemented (:func:`fedsdr_regularizer`), for a micro-batch of n examples with
personal features ``h_P,i`` and global features ``h_G,i`` (vectors of the hidden size d):

    c      = (1/n) * sum_j h_G,j                      (batch mean of the global features)
    m_i    = |h_G,i - c|                              (element-wise absolute value, a d-vector)
    s_i    = h_P,i . m_i = sum_k h_P,i[k] * m_i[k]    (dot product, a scalar)
    reg    = (1/n) * sum_i |s_i|

i.e. "." is the dot product and the outer bars the absolute value of that scalar. ``m_i`` is a
fixed (stop-gradient) per-dimension weight: how far example i's global feature lies from the
batch's global mean in each dimension; minimizing ``reg`` shrinks the personal feature along the
dimensions in which the global model tells examples apart. Only ``h_P`` gets gradients.

Per round (as FedOA): from ``fed.personal_start_round`` on, the client trains its personal
adapter P on ``CE(y | x; base + P) + lambda * reg`` with ``h_G`` from the *received* global
adapter (``fedsdr.regular_weight`` = lambda, ``fedsdr.feature`` = last token or mean), then
trains the received G on the task loss and uploads it; FedAvg on the server.

Deviations / notes:
- As in FedOA, ``h_G`` is computed once per local update in eval mode (G is fixed meanwhile).
- The batch mean ``c`` runs over the *micro-batch* (``train.micro_batch_size``): with
  micro-batches of one example ``m_i = 0`` and the regularizer vanishes. The term is added per
  micro-batch (scaled by its share of the step), like FedOA's.
"""
from __future__ import annotations

from typing import Literal

import torch

from fedoa.algorithms.base import ClientContext
from fedoa.algorithms.fedoa import FEATURE_HELP
from fedoa.algorithms.personalized import PersonalThenGlobal
from fedoa.config import Section, setting
from fedoa.data.batching import Batch
from fedoa.model.adapters import GLOBAL, AdapterModel, AdapterState
from fedoa.registry import register
from fedoa.training.joint import SlotJob, SlotReg, segment_sum
from fedoa.training.loop import Objective
from fedoa.training.losses import (
    example_features,
    features,
    response_loss,
    task_objective,
)


class FedSDRSettings(Section):
    """FedSDR: the personal adapter's feature regularizer."""

    regular_weight: float = setting(0.5, "lambda: weight of the FedSDR feature regularizer.", ge=0)
    feature: Literal["last_token", "answer", "mean"] = setting("last_token", FEATURE_HELP)


def fedsdr_regularizer(h_p: torch.Tensor, h_g: torch.Tensor) -> torch.Tensor:
    """``mean_i |h_P,i . |h_G,i - mean_j h_G,j||`` over the rows of ``[n, d]`` feature matrices."""
    h_p, h_g = h_p.float(), h_g.float().detach()
    weight = (h_g - h_g.mean(dim=0, keepdim=True)).abs()
    return (h_p * weight).sum(dim=-1).abs().mean()


def fedsdr_per_group(h_p, h_g, group, counts, groups: int) -> torch.Tensor:
    """:func:`fedsdr_regularizer` of each group of rows (the batch mean ``c`` per group)."""
    h_g = h_g.detach()
    center = segment_sum(h_g, group, groups) / counts.unsqueeze(1)
    weight = (h_g - center[group]).abs()
    return segment_sum((h_p * weight).sum(-1).abs(), group, groups) / counts


def sdr_regularized(target: torch.Tensor, weight: float, kind: str) -> Objective:
    """Task loss + ``weight * fedsdr_regularizer(h(x), target[x])``; rows indexed by example id."""

    def objective(am: AdapterModel, batch: Batch):
        loss, hidden = response_loss(am, batch)
        reg = fedsdr_regularizer(features(hidden, batch, kind), target[batch.ids])
        return loss + weight * reg, {"task_loss": loss.item(), "reg": reg.item()}

    return objective


@register(FedSDRSettings)
class FedSDR(PersonalThenGlobal):
    name = "fedsdr"
    evaluated = ("personal", "global")

    def personal_objective(self, ctx: ClientContext, global_state: AdapterState) -> Objective:
        c = self.settings
        if c.regular_weight == 0:
            return task_objective
        target = example_features(ctx.am, GLOBAL, ctx.train, c.feature, self.cfg.train.micro_batch_size, ctx.pad_id)
        return sdr_regularized(target, c.regular_weight, c.feature)

    def personal_job(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> SlotJob:
        job = super().personal_job(ctx, global_state, round_)
        c = self.settings
        if c.regular_weight:
            job.reg = SlotReg(c.feature, c.regular_weight, fedsdr_per_group)
        return job
