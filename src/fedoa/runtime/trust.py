"""What the server checks and adds before an update shapes the global adapter, written once for
every runtime: validation of each update, client-level differential privacy (DP-FedAvg), the
audit log, and the poisoning drill used to test them.

Validation (:func:`validate`): an update must have exactly the global adapter's tensor names,
shapes and dtypes, only finite values, an example count between 1 and what the client declared
when it joined, and an L2 norm of its change within ``trust.max_norm`` and within
``trust.norm_factor`` times the median of the round's changes. A rejected update is left out
with its reason; the driver then needs ``fed.min_clients`` accepted ones.

DP-FedAvg (McMahan et al., ICLR 2018): each accepted change is clipped to L2 norm ``dp.clip_norm``
C, the changes are averaged (uniform weights) and Gaussian noise of standard deviation
``dp.noise_multiplier * C / m`` is added per coordinate (m: the round's accepted updates). The
privacy loss is accounted by dp-accounting's RDP accountant, per round.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import torch

from fedoa.algorithms.aggregation import change_norm
from fedoa.algorithms.base import ClientUpdate
from fedoa.model.adapters import AdapterState, state_digest
from fedoa.seeding import derive_seed


@dataclass
class Verdict:
    client: str
    accepted: bool
    reason: str
    norm: float
    digest: str


def _shape_problem(state: AdapterState, reference: AdapterState) -> str:
    missing, extra = sorted(reference.keys() - state.keys()), sorted(state.keys() - reference.keys())
    if missing or extra:
        return f"tensor names differ from the global adapter's (missing {missing[:2]}, unexpected {extra[:2]})"
    for k, ref in reference.items():
        t = state[k]
        if not isinstance(t, torch.Tensor) or t.shape != ref.shape:
            return f"tensor {k} has shape {tuple(getattr(t, 'shape', ()))}, expected {tuple(ref.shape)}"
        if t.dtype != ref.dtype:
            return f"tensor {k} has dtype {t.dtype}, expected {ref.dtype}"
        if not torch.isfinite(t).all():
            return f"tensor {k} holds non-finite values (NaN or infinity)"
    return ""


def validate(updates: list[ClientUpdate], global_state: AdapterState, declared: dict[str, int],
             settings) -> list[Verdict]:
    """One verdict per update (updates without a state, e.g. Local's, are accepted as they are)."""
    out: list[Verdict] = []
    for u in updates:
        if u.state is None:
            out.append(Verdict(u.client, True, "", 0.0, ""))
            continue
        problem = _shape_problem(u.state, global_state)
        norm = math.nan if problem else change_norm(u.state, global_state)
        limit = declared.get(u.client)
        if not problem and not 1 <= u.num_examples <= (limit if limit is not None else u.num_examples):
            problem = f"claims {u.num_examples} examples, declared {limit} when it joined"
        out.append(Verdict(u.client, not problem, problem, norm, state_digest(u.state)))
    _norm_bounds(out, settings)
    return out


def _norm_bounds(verdicts: list[Verdict], settings) -> None:
    norms = [v.norm for v in verdicts if v.accepted and v.digest]
    median = statistics.median(norms) if norms else 0.0
    for v in verdicts:
        if not v.accepted or not v.digest:
            continue
        if settings.max_norm and v.norm > settings.max_norm:
            v.accepted, v.reason = False, f"update norm {v.norm:.4g} exceeds trust.max_norm = {settings.max_norm:g}"
        elif settings.norm_factor and median > 0 and v.norm > settings.norm_factor * median:
            v.accepted, v.reason = False, (f"update norm {v.norm:.4g} exceeds trust.norm_factor = "
                                           f"{settings.norm_factor:g} x the round's median {median:.4g}")


# ---------------------------------------------------------------------------- differential privacy


def add_noise(state: AdapterState, std: float, seed: int) -> AdapterState:
    """Gaussian noise of standard deviation ``std`` on every coordinate, drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return {k: (v.double() + torch.randn(v.shape, generator=gen, dtype=torch.float64) * std).to(v.dtype)
            for k, v in sorted(state.items())}


def noise_seed(run_seed: int, round_: int) -> int:
    return derive_seed(run_seed, round_, "dp-noise")


def epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """(epsilon, delta)-DP of ``rounds`` Gaussian mechanisms on Poisson-sampled clients (RDP accountant)."""
    import logging

    import dp_accounting as dpa
    from dp_accounting import rdp

    # its per-order convergence warnings (orders it drops from the minimum) would print every round
    logging.getLogger("absl").setLevel(logging.ERROR)
    event = dpa.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        event = dpa.PoissonSampledDpEvent(sampling_rate, event)
    accountant = rdp.RdpAccountant()
    accountant.compose(dpa.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(delta))


# ---------------------------------------------------------------------------- the poisoning drill


def poison(state: AdapterState, reference: AdapterState, kind: str, factor: float) -> AdapterState:
    """A hostile client's upload: its change scaled by ``factor``, sign-flipped, or NaN."""
    if kind == "nan":
        return {k: torch.full_like(v, math.nan) for k, v in state.items()}
    scale = factor if kind == "scale" else -1.0
    return {k: (reference[k].double() + (state[k].double() - reference[k].double()) * scale).to(state[k].dtype)
            for k in state}


def drill(attack, client: str, update: ClientUpdate, reference: AdapterState) -> ClientUpdate:
    """The upload of ``client`` as the poisoning drill (``[attack]``) makes it: hostile or untouched."""
    if attack.kind != "none" and client in attack.clients and update.state is not None:
        update.state = poison(update.state, reference, attack.kind, attack.factor)
    return update


def audit_line(round_: int, v: Verdict, rule: str, noise_std: float, global_digest: str) -> dict[str, Any]:
    return {"round": round_, "client": v.client, "update_sha256": v.digest, "norm": v.norm,
            "accepted": v.accepted, "reason": v.reason, "aggregation": rule, "dp_noise_std": noise_std,
            "global_sha256": global_digest}
