"""What the server checks and adds before an update shapes the global adapter, written once for
every runtime: validation of each update, client-level differential privacy (DP-FedAvg), the
audit log, and the poisoning drill used to test them.

Validation (:func:`validate`): a compressed upload (``fed.upload`` bfloat16 or int8) must have the
format the run asked for and exactly the names and shapes of the adapter its client received, the
payload dtype, and one finite, non-negative scale per int8 tensor, all checked before it is decoded
into ``received + change``; then an update must have exactly the tensor names, shapes and dtypes
of the global adapter as its client received it (cut to the rank the client declared), only finite values, an example count between 1 and what the client declared
when it first joined, and an L2 norm of its change within an absolute bound (``trust.max_norm``,
or by default ``trust.history_factor`` times the median norm accepted in earlier rounds, which
nobody can move in the current round) and within ``trust.norm_factor`` times the median of the
OTHER uploads of the round (so with two clients an attacker is measured against the honest one,
and a colluding minority against the honest majority). A rejected update is left out with its
reason; the driver then needs ``fed.min_clients`` accepted ones.

DP-FedAvg (McMahan et al., ICLR 2018; the fixed-denominator estimator, as Opacus averages over
the expected batch size): clients are Poisson-sampled with rate q (:mod:`fedoa.runtime.sampling`),
each accepted change is clipped to L2 norm ``dp.clip_norm`` C, the clipped changes are SUMMED (a
rejected or failed client adds zero), Gaussian noise of standard deviation ``z C`` is added to every
coordinate of the sum, and the sum is divided by the expected number of sampled clients ``q n``,
whoever actually took part. Adding or removing one client moves the sum by at most C (its own
clipped change; nobody else's verdict depends on it), which is the sensitivity the accountant's
``GaussianDpEvent(z)`` assumes. The noise comes from the OS's cryptographic source
(:func:`secure_normal`), never from the run's seed. The privacy loss is accounted by dp-accounting's
RDP accountant (``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` composed over the rounds).
"""
from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass
from typing import Any

import torch

from fedoa.algorithms.aggregation import change_norm
from fedoa.algorithms.base import ClientUpdate
from fedoa.model.adapters import AdapterState, state_digest
from fedoa.model.uploads import decode_upload, pad_change, payload_problem


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


def _decode(u: ClientUpdate, reference: AdapterState, fmt: str) -> str:
    """Check a client's payload against the adapter it received, then decode it into ``u.state``;
    the problem when there is one."""
    if u.upload is None:
        return f"a plain adapter came, fed.upload = {fmt!r} expects a compressed change" if fmt != "float32" else ""
    problem = payload_problem(u.upload, reference, fmt)
    if not problem:
        u.state = decode_upload(u.upload, reference)
    return problem


def validate(updates: list[ClientUpdate], global_state: AdapterState, declared: dict[str, int],
             settings, dp: bool = False, history: list[float] | None = None,
             references: dict[str, AdapterState] | None = None, fmt: str = "float32") -> list[Verdict]:
    """One verdict per update (updates without a state or payload, e.g. Local's, are accepted as
    they are). ``references``: the adapter each client received (the global one cut to its rank;
    default: ``global_state``); ``fmt``: ``fed.upload`` (compressed payloads are decoded here).

    With ``dp`` every verdict depends on that client's own upload only (names, shapes, dtypes,
    finiteness, ``trust.max_norm`` when set): the bounds relative to the other clients' norms are
    not applied, since they would let one client's presence change whose update counts (the
    clipping to ``dp.clip_norm`` bounds every contribution instead)."""
    out: list[Verdict] = []
    for u in updates:
        if u.state is None and u.upload is None:
            out.append(Verdict(u.client, True, "", 0.0, ""))
            continue
        reference = (references or {}).get(u.client, global_state)
        problem = _decode(u, reference, fmt)
        if problem:
            out.append(Verdict(u.client, False, problem, math.nan, ""))
            continue
        problem = _shape_problem(u.state, reference)
        norm = math.nan if problem else change_norm(u.state, reference)
        limit = declared.get(u.client)
        if not problem and not 1 <= u.num_examples <= (limit if limit is not None else u.num_examples):
            problem = f"claims {u.num_examples} examples, declared {limit} when it joined"
        out.append(Verdict(u.client, not problem, problem, norm, state_digest(u.state)))
    if dp:
        _absolute_bound(out, settings.max_norm)
    else:
        _norm_bounds(out, settings, history or [])
    return out


def absolute_bound(settings, history: list[float]) -> float:
    """``trust.max_norm`` when set, else ``trust.history_factor`` x the median of the norms accepted in
    earlier rounds (0: no bound, e.g. in round 1)."""
    if settings.max_norm:
        return settings.max_norm
    if settings.history_factor and history:
        return settings.history_factor * statistics.median(history)
    return 0.0


def _absolute_bound(verdicts: list[Verdict], max_norm: float) -> None:
    for v in verdicts:
        if v.accepted and v.digest and max_norm and v.norm > max_norm:
            v.accepted, v.reason = False, f"update norm {v.norm:.4g} exceeds trust.max_norm = {max_norm:g}"


def _norm_bounds(verdicts: list[Verdict], settings, history: list[float]) -> None:
    bound = absolute_bound(settings, history)
    what = "trust.max_norm" if settings.max_norm else "the bound from earlier rounds (trust.history_factor x their median)"
    for v in verdicts:
        if v.accepted and v.digest and bound and v.norm > bound:
            v.accepted, v.reason = False, f"update norm {v.norm:.4g} exceeds {what} = {bound:.4g}"
    candidates = [v for v in verdicts if v.accepted and v.digest]
    if not settings.norm_factor:
        return
    for v in candidates:  # each against the median of the others, so nobody moves their own bar
        others = [o.norm for o in candidates if o is not v]
        median = statistics.median(others) if others else 0.0
        if median > 0 and v.norm > settings.norm_factor * median:
            v.accepted, v.reason = False, (f"update norm {v.norm:.4g} exceeds trust.norm_factor = "
                                           f"{settings.norm_factor:g} x the median of the round's other uploads "
                                           f"{median:.4g}")


# ---------------------------------------------------------------------------- differential privacy


def secure_normal(n: int) -> torch.Tensor:
    """``n`` standard normal samples (float64) whose every random bit comes from ``os.urandom``.

    Box-Muller on 53-bit uniforms from the OS's cryptographic source: there is no generator state
    or seed that anyone could recover or replay. As Opacus's ``secure_mode`` does against
    floating-point attacks on the Gaussian mechanism (Holohan et al. 2021), each sample is the sum
    of four independent normals divided by 2 (variance 1)."""
    import numpy as np

    if n <= 0:
        return torch.zeros(0, dtype=torch.float64)
    draws = 4 * n
    pairs = (draws + 1) // 2
    bits = np.frombuffer(os.urandom(16 * pairs), dtype=np.uint64).reshape(pairs, 2) >> np.uint64(11)
    u1 = (bits[:, 0].astype(np.float64) + 1.0) * 2.0 ** -53  # (0, 1]: log never sees 0
    u2 = bits[:, 1].astype(np.float64) * 2.0 ** -53
    radius = np.sqrt(-2.0 * np.log(u1))
    normals = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])[:draws]
    return torch.from_numpy(normals.reshape(4, n).sum(axis=0) / 2.0)


def clipped_sum(states: list[AdapterState], reference: AdapterState, clip: float) -> AdapterState:
    """The sum (float64) of every state's change from ``reference``, each clipped to L2 norm ``clip``."""
    total = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in reference.items()}
    for state in states:
        norm = change_norm(state, reference)
        scale = 1.0 if norm <= clip or norm == 0 else clip / norm
        for k, ref in reference.items():
            total[k] += (state[k].double() - ref.double()) * scale
    return total


def dp_sum(updates: list[ClientUpdate], global_state: AdapterState, declared: dict[str, int], trust, clip: float,
           references: dict[str, AdapterState] | None = None, fmt: str = "float32"
           ) -> tuple[AdapterState, list[Verdict]]:
    """What one DP round releases before its noise: the clipped sum of the accepted changes (a
    rejected upload counts as zero; an upload below the global rank is padded with a zero change)
    and the verdicts. Its sensitivity to adding or removing one client is ``clip``
    (tests/runtime/test_trust.py checks it property-wise)."""
    verdicts = validate(updates, global_state, declared, trust, dp=True, references=references, fmt=fmt)
    accepted = [pad_change(u.state, global_state) for u, v in zip(updates, verdicts)
                if v.accepted and u.state is not None]
    return clipped_sum(accepted, global_state, clip), verdicts


def dp_release(total: AdapterState, global_state: AdapterState, noise_multiplier: float, clip: float,
               expected_clients: float) -> tuple[AdapterState, float]:
    """``global + (total + N(0, (z C)^2)) / expected_clients`` in the global adapter's dtypes, and the
    noise's standard deviation per coordinate of that average (``z C / expected_clients``)."""
    std = noise_multiplier * clip
    out = {}
    for k in sorted(total):
        noisy = total[k] + secure_normal(total[k].numel()).reshape(total[k].shape) * std
        out[k] = (global_state[k].double() + noisy / expected_clients).to(global_state[k].dtype)
    return out, std / expected_clients


def epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """(epsilon, delta)-DP of ``rounds`` Gaussian mechanisms on Poisson-sampled clients (RDP accountant,
    add-or-remove-one neighbours: the noise multiplier is the noise std over the sum's sensitivity C)."""
    if rounds <= 0:
        return 0.0
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
