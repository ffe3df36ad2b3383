"""Server-side combination of adapter states: FedAvg and the robust rules beside it.

Every rule works key by key on the stacked states (LoRA A and B separately, as FedAvg does), in
float64, and casts back, so the result does not depend on float32 rounding of partial sums.
- ``uniform`` / ``examples``: FedAvg with equal or example-count weights;
- ``median``: the coordinate-wise median (Yin et al., ICML 2018);
- ``trimmed_mean``: per coordinate, the mean after dropping the ``trim`` fraction of the largest
  and of the smallest values (Yin et al., ICML 2018);
- norm clipping (``fed.clip_norm``), applied before any rule: each change from the global adapter
  is scaled down to at most that L2 norm.
"""
from __future__ import annotations

import math

import torch

from fedoa.model.adapters import AdapterState

RULES = ("uniform", "examples", "median", "trimmed_mean")


def fedavg(states: list[AdapterState], weights: list[float]) -> AdapterState:
    """Weighted mean of states, key by key."""
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


def _stacked(states: list[AdapterState], key: str) -> torch.Tensor:
    return torch.stack([s[key].to(torch.float64) for s in states])


def median(states: list[AdapterState]) -> AdapterState:
    """Coordinate-wise median (the mean of the two middle values for an even count)."""
    return {k: torch.quantile(_stacked(states, k), 0.5, dim=0).to(states[0][k].dtype) for k in states[0]}


def trimmed_mean(states: list[AdapterState], trim: float) -> AdapterState:
    """Coordinate-wise mean without the ``floor(trim * n)`` largest and smallest values."""
    cut = math.floor(trim * len(states))
    out = {}
    for k in states[0]:
        values = _stacked(states, k).sort(dim=0).values
        out[k] = values[cut: len(states) - cut].mean(dim=0).to(states[0][k].dtype)
    return out


def change_norm(state: AdapterState, reference: AdapterState) -> float:
    """L2 norm of ``state - reference`` over every tensor (float64)."""
    return math.sqrt(sum(float((state[k].double() - reference[k].double()).pow(2).sum()) for k in reference))


def clip_change(state: AdapterState, reference: AdapterState, bound: float) -> AdapterState:
    """``reference + change * min(1, bound / ||change||)`` in float64, original dtypes."""
    norm = change_norm(state, reference)
    scale = 1.0 if norm <= bound or norm == 0 else bound / norm
    return {k: (reference[k].double() + (state[k].double() - reference[k].double()) * scale).to(reference[k].dtype)
            for k in reference}


def combine(states: list[AdapterState], weights: list[float], rule: str, trim: float = 0.2) -> AdapterState:
    if rule == "median":
        return median(states)
    if rule == "trimmed_mean":
        return trimmed_mean(states, trim)
    return fedavg(states, weights)
