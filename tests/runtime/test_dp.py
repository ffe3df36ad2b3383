"""DP-FedAvg that holds: noise from the OS's cryptographic source, the clipped sum with a fixed
denominator, rejected clients as zero updates, Poisson sampling matching the accountant, and the
sensitivity the accountant assumes (a property test over random rounds)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedoa.algorithms.base import ClientUpdate
from fedoa.config import TrustConfig
from fedoa.runtime import trust
from fedoa.runtime.sampling import sample_clients
from fedoa.runtime.trust import dp_release, dp_sum, epsilon, secure_normal

G = {"a.lora_A.weight": torch.zeros(2, 3), "a.lora_B.weight": torch.zeros(3, 2)}


def norm(state) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in state.values()))


# ----------------------------------------------------------------------------- the noise


def test_the_noise_is_standard_normal_and_every_bit_comes_from_os_urandom(monkeypatch):
    x = secure_normal(200_000)
    assert x.dtype == torch.float64 and abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01
    # tails of a normal: P(|x| > 2) = 4.55 %, P(|x| > 3) = 0.27 %
    assert abs(float((x.abs() > 2).double().mean()) - 0.0455) < 0.003
    assert abs(float((x.abs() > 3).double().mean()) - 0.0027) < 0.001
    assert not torch.equal(secure_normal(8), secure_normal(8))  # no seed: two draws differ
    calls = []

    def fake_urandom(n):
        calls.append(n)
        return bytes(range(256)) * (n // 256) + bytes(range(n % 256))

    monkeypatch.setattr(trust.os, "urandom", fake_urandom)
    assert torch.equal(secure_normal(5), secure_normal(5)) and calls  # a function of os.urandom's bytes only


def test_two_dp_releases_of_the_same_round_differ_and_none_uses_the_run_seed():
    total = {k: torch.ones(v.shape, dtype=torch.float64) for k, v in G.items()}
    a, std = dp_release(total, G, 1.0, 0.5, 4.0)
    b, _ = dp_release(total, G, 1.0, 0.5, 4.0)
    assert std == pytest.approx(1.0 * 0.5 / 4.0)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(AttributeError):
        trust.noise_seed  # noqa: B018  (the seed-derived noise is gone)


def test_the_release_is_the_noised_sum_over_the_expected_count():
    big = {k: torch.full(v.shape, 1e6, dtype=torch.float64) for k, v in G.items()}
    out, _ = dp_release(big, G, 1e-9, 1.0, 4.0)  # noise negligible next to the sum
    assert all(torch.allclose(out[k].double(), torch.full(v.shape, 2.5e5, dtype=torch.float64)) for k, v in G.items())


# ----------------------------------------------------------------------------- the sum and its sensitivity


def test_rejected_clients_are_zero_updates_and_the_denominator_does_not_move():
    ok = ClientUpdate("ok", {k: v + 1.0 for k, v in G.items()}, 8)
    bad = ClientUpdate("bad", {k: torch.full_like(v, math.nan) for k, v in G.items()}, 8)
    alone, _ = dp_sum([ok], G, {"ok": 8}, TrustConfig(), clip=1.0)
    both, verdicts = dp_sum([ok, bad], G, {"ok": 8, "bad": 8}, TrustConfig(), clip=1.0)
    assert [v.accepted for v in verdicts] == [True, False]
    assert all(torch.equal(alone[k], both[k]) for k in G)
    assert norm(alone) == pytest.approx(1.0)  # clipped to C


def test_under_dp_no_client_changes_another_ones_verdict():
    """The median-relative bound (default trust.norm_factor = 10) is not applied under DP: with
    it, a client's presence could reject another client (norms 1 and 20: the median moves)."""
    small = ClientUpdate("small", {k: v + 0.1 for k, v in G.items()}, 8)
    large = ClientUpdate("large", {k: v + 2.0 for k, v in G.items()}, 8)
    declared = {"small": 8, "large": 8, "x": 8}
    with_x = [small, large, ClientUpdate("x", {k: v + 0.1 for k, v in G.items()}, 8)]
    plain = {v.client: v.accepted for v in trust.validate(with_x, G, declared, TrustConfig())}
    assert plain["large"] is False  # without DP the relative bound rejects it ...
    _, verdicts = dp_sum(with_x, G, declared, TrustConfig(), clip=1.0)
    assert all(v.accepted for v in verdicts)  # ... under DP every finite, well-formed update counts


finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@st.composite
def uploads(draw, name: str):
    kind = draw(st.sampled_from(["ok", "ok", "ok", "scaled", "nan", "inf", "shape", "names", "dtype", "greedy"]))
    state = {k: torch.tensor(draw(st.lists(finite, min_size=v.numel(), max_size=v.numel())),
                             dtype=torch.float32).reshape(v.shape) for k, v in G.items()}
    if kind == "scaled":
        state = {k: v * 1e6 for k, v in state.items()}
    elif kind in ("nan", "inf"):
        state["a.lora_A.weight"][0, 0] = math.nan if kind == "nan" else math.inf
    elif kind == "shape":
        state["a.lora_B.weight"] = torch.zeros(2, 2)
    elif kind == "names":
        state["b.extra"] = torch.zeros(1)
    elif kind == "dtype":
        state["a.lora_A.weight"] = state["a.lora_A.weight"].double()
    return ClientUpdate(name, state, 10_000 if kind == "greedy" else 8)


@st.composite
def rounds(draw):
    n = draw(st.integers(1, 6))
    return [draw(uploads(f"c{i}")) for i in range(n)], draw(st.floats(0.01, 10.0)), draw(st.integers(0, n - 1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds(), st.sampled_from([0.0, 0.5, 3.0]), st.sampled_from([0.0, 1.0, 10.0]))
def test_adding_or_removing_one_client_moves_the_released_sum_by_at_most_clip(case, max_norm, norm_factor):
    """The accountant's GaussianDpEvent(z) assumes sensitivity C of the noised quantity under
    add/remove-one-client neighbours; whatever the uploads (hostile ones too) and trust settings."""
    updates, clip, k = case
    settings_ = TrustConfig(max_norm=max_norm, norm_factor=norm_factor)
    declared = {u.client: 8 for u in updates}
    with_k, _ = dp_sum(updates, G, declared, settings_, clip)
    without_k, _ = dp_sum(updates[:k] + updates[k + 1:], G, declared, settings_, clip)
    moved = norm({key: with_k[key] - without_k[key] for key in G})
    assert moved <= clip * (1 + 1e-9) + 1e-12


# ----------------------------------------------------------------------------- sampling = the accountant's


def test_dp_sampling_is_poisson_with_rate_q_and_not_replayable():
    names = [f"c{i}" for i in range(4)]
    draws = [sample_clients(names, 0.25, seed=0, round_=1, poisson=True) for _ in range(4000)]
    sizes = [len(d) for d in draws]
    # Binomial(4, 0.25): P(0) = 0.316, mean 1; a fixed-size draw would always give 1
    assert abs(sizes.count(0) / len(draws) - 0.316) < 0.03 and abs(sum(sizes) / len(draws) - 1.0) < 0.06
    for n in names:  # each client independently with probability q
        assert abs(sum(n in d for d in draws) / len(draws) - 0.25) < 0.03
    assert len({tuple(d) for d in draws[:50]}) > 1  # the same seed and round give different draws
    assert sample_clients(names, 1.0, 0, 1, poisson=True) == names
    assert sample_clients(names, 0.25, 0, 1) == sample_clients(names, 0.25, 0, 1)  # without DP: seeded, fixed size


def test_the_epsilon_reported_is_poisson_sampled_gaussian_at_the_configured_rate():
    import dp_accounting as dpa
    from dp_accounting import rdp

    acc = rdp.RdpAccountant()
    acc.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(1.0)), 100))
    assert epsilon(1.0, 0.1, 100, 1e-5) == pytest.approx(acc.get_epsilon(1e-5))
    assert epsilon(1.0, 0.1, 0, 1e-5) == 0.0


# ----------------------------------------------------------------------------- a real (tiny) run


def test_a_dp_run_with_an_empty_round_releases_noise_over_the_expected_count(tmp_path, monkeypatch):
    """Poisson sampling may sample nobody: the round still releases (0 + noise) / (q n), the
    accountant counts it, and the participation counts say who took part."""
    import json

    from fedoa.runtime import driver
    from fedoa.runtime.inprocess import run_simulation
    from tests.support import vader_tiny_config

    real = driver.sample_clients
    monkeypatch.setattr(driver, "sample_clients", lambda names, q, seed, r, poisson=False:
                        [] if r == 1 else ["movie"] if r == 2 else real(names, q, seed, r, poisson))
    cfg = vader_tiny_config(fed={"client_fraction": 0.5, "rounds": 2, "personal_start_round": 2},
                            dp={"noise_multiplier": 1.0, "clip_norm": 0.5})
    cfg.method = "fedit"
    results = run_simulation(cfg, tmp_path / "run", progress=False, reports=False).to_json()
    dp = results["dp"]
    assert dp["expected_clients"] == 1.5 and "Poisson" in dp["sampling"]
    assert dp["epsilon_per_round"] == pytest.approx([epsilon(1.0, 0.5, r, 1e-5) for r in (1, 2)])
    assert dp["epsilon_if_participation_known"] == pytest.approx(epsilon(1.0, 1.0, 1, 1e-5))
    assert results["communication"]["updates_per_round"] == {"1": [], "2": ["movie"]}
    audit = [json.loads(x) for x in (tmp_path / "run" / "audit.jsonl").read_text().splitlines()]
    assert [a["client"] for a in audit] == ["movie"] and audit[0]["dp_noise_std"] == pytest.approx(1.0 * 0.5 / 1.5)


def test_the_epsilons_in_docs_privacy_and_trust_are_the_accountants():
    """The table "Measured epsilon for the documented settings": each figure, recomputed (delta 1e-5)."""
    rows = [  # (z, q, rounds) -> the figure the doc states
        ((1.0, 1.0, 3), 9.01), ((0.5, 1.0, 3), 21.4),  # z = 1, all 4 clients, 3 rounds; the old z/2
        ((1.0, 0.1, 100), 7.9), ((0.5, 0.25, 100), 103.1), ((1.0, 0.25, 100), 20.2),  # q = 0.1; old rate 0.25
        ((2.0, 0.1, 100), 2.6),  # z = 2, q = 0.1
    ]
    for (z, q, rounds), figure in rows:
        assert round(epsilon(z, q, rounds, 1e-5), 2 if figure == 9.01 else 1) == figure, (z, q, rounds)
