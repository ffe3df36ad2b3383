"""Server-side combination of adapter states."""
from __future__ import annotations

import torch

from fedoa.model.adapters import AdapterState


def fedavg(states: list[AdapterState], weights: list[float]) -> AdapterState:
    """Weighted mean of states, key by key (LoRA A and B are averaged separately, as FedAvg does).

    Accumulates in float64 and casts back, so the result does not depend on float32 rounding of
    partial sums.
    """
    if not states:
        raise ValueError("fedavg needs at least one state")
    if len(states) != len(weights):
        raise ValueError("one weight per state")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    out: AdapterState = {}
    for key in states[0]:
        acc = torch.zeros(states[0][key].shape, dtype=torch.float64)
        for s, w in zip(states, weights):
            acc += s[key].to(torch.float64) * (w / total)
        out[key] = acc.to(states[0][key].dtype)
    return out
