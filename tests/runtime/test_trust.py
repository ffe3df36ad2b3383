"""The server's checks: update validation, robust aggregation, DP-FedAvg, the audit log, and the
poisoning drill, on crafted updates and on real (tiny) runs."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from fedoa.algorithms.aggregation import change_norm, clip_change, median, trimmed_mean
from fedoa.algorithms.base import ClientUpdate
from fedoa.config import TrustConfig
from fedoa.errors import FedoaError
from fedoa.model.adapters import state_digest
from fedoa.runtime.inprocess import run_simulation
from fedoa.runtime.trust import epsilon, poison, validate
from tests.support import vader_tiny_config

G = {"a.lora_A.weight": torch.zeros(2, 3), "a.lora_B.weight": torch.zeros(3, 2)}


def up(client, delta=0.1, n=8, **changes):
    state = {k: v + delta for k, v in G.items()}
    state.update(changes)
    return ClientUpdate(client, state, n)


# ----------------------------------------------------------------------------- crafted updates


def test_validation_rejects_each_kind_of_bad_upload_and_says_why():
    updates = [
        up("ok1"), up("ok2", 0.12), up("ok3", 0.09),
        up("names", **{"b.lora_A.weight": torch.zeros(2, 3)}),
        ClientUpdate("shape", {**G, "a.lora_A.weight": torch.zeros(3, 3)}, 8),
        ClientUpdate("dtype", {**G, "a.lora_A.weight": torch.zeros(2, 3, dtype=torch.float16)}, 8),
        up("nan", **{"a.lora_B.weight": torch.full((3, 2), math.nan)}),
        up("greedy", n=10_000),
        up("huge", 100.0),
    ]
    declared = {u.client: 8 for u in updates}
    verdicts = {v.client: v for v in validate(updates, G, declared, TrustConfig(norm_factor=10))}
    assert all(verdicts[c].accepted for c in ("ok1", "ok2", "ok3"))
    assert "tensor names" in verdicts["names"].reason
    assert "shape (3, 3)" in verdicts["shape"].reason
    assert "dtype torch.float16" in verdicts["dtype"].reason
    assert "non-finite" in verdicts["nan"].reason
    assert "claims 10000 examples, declared 8" in verdicts["greedy"].reason
    assert "exceeds trust.norm_factor" in verdicts["huge"].reason
    assert verdicts["ok1"].norm == pytest.approx(change_norm(updates[0].state, G))
    assert verdicts["ok1"].digest == state_digest(updates[0].state)
    absolute = validate([up("x", 0.5)], G, {"x": 8}, TrustConfig(norm_factor=0, max_norm=1.0))[0]
    assert not absolute.accepted and "trust.max_norm" in absolute.reason


def test_robust_rules_by_hand():
    states = [{"w": torch.tensor([1.0, 10.0])}, {"w": torch.tensor([2.0, -5.0])}, {"w": torch.tensor([3.0, 0.0])},
              {"w": torch.tensor([400.0, 7.0])}]
    assert median(states)["w"].tolist() == [2.5, 3.5]
    assert trimmed_mean(states, 0.25)["w"].tolist() == [2.5, 3.5]  # drops 1 largest and 1 smallest
    assert trimmed_mean(states, 0.0)["w"].tolist() == pytest.approx([101.5, 3.0])
    clipped = clip_change({"w": torch.tensor([3.0, 4.0])}, {"w": torch.zeros(2)}, 1.0)
    assert clipped["w"].tolist() == pytest.approx([0.6, 0.8])
    assert clip_change({"w": torch.tensor([0.3, 0.4])}, {"w": torch.zeros(2)}, 1.0)["w"].tolist() == pytest.approx([0.3, 0.4])


def test_poisons_of_the_drill():
    state = {k: v + 0.5 for k, v in G.items()}
    assert all(torch.equal(poison(state, G, "scale", 100.0)[k], v * 100) for k, v in state.items())
    assert all(torch.equal(poison(state, G, "signflip", 0)[k], -v) for k, v in state.items())
    assert all(torch.isnan(v).all() for v in poison(state, G, "nan", 0).values())


def test_epsilon_is_the_accountants():
    import dp_accounting as dpa
    from dp_accounting import rdp

    acc = rdp.RdpAccountant()
    acc.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.5, dpa.GaussianDpEvent(1.1)), 4))
    assert epsilon(1.1, 0.5, 4, 1e-5) == pytest.approx(acc.get_epsilon(1e-5))
    assert epsilon(1.1, 0.5, 5, 1e-5) > epsilon(1.1, 0.5, 4, 1e-5)


# ----------------------------------------------------------------------------- real runs


def _global(out):
    return load_file(str(out / "adapters" / "global" / "adapter_model.safetensors"))


@pytest.mark.parametrize("kind", ["nan", "scale", "signflip"])
def test_a_hostile_client_is_rejected_every_round_and_audited(tmp_path, kind):
    cfg = vader_tiny_config(attack={"kind": kind, "clients": ["nyt"], "factor": 100.0})
    if kind == "signflip":  # a flipped sign keeps the norm: only a robust rule can tame it
        cfg.fed.aggregation = "median"
    results = run_simulation(cfg, tmp_path / "run", progress=False, reports=False)
    audit = [json.loads(line) for line in (tmp_path / "run" / "audit.jsonl").read_text().splitlines()]
    assert len(audit) == 2 * 3 and {a["round"] for a in audit} == {1, 2}
    nyt = [a for a in audit if a["client"] == "nyt"]
    if kind == "signflip":
        assert all(a["accepted"] for a in nyt) and all(a["aggregation"] == "median" for a in audit)
    else:
        assert not any(a["accepted"] for a in nyt)
        if kind == "nan":
            assert all("non-finite" in a["reason"] for a in nyt)
        else:  # round 1: the others' median; round 2: already the bound from round 1's accepted norms
            assert [("norm_factor" in a["reason"], "earlier rounds" in a["reason"]) for a in nyt] == [(True, False), (False, True)]
        assert len(results.failures) == 2 and "update rejected" in results.failures[0]
        assert results.communication["updates_per_round"] == {"1": ["movie", "tweets"], "2": ["movie", "tweets"]}
    assert all(a["update_sha256"] and a["global_sha256"] for a in audit)
    assert audit[-1]["global_sha256"] == state_digest(_global(tmp_path / "run"))
    assert all(torch.isfinite(v).all() for v in _global(tmp_path / "run").values())


def test_too_few_valid_uploads_stop_the_run(tmp_path):
    cfg = vader_tiny_config(attack={"kind": "nan", "clients": ["movie", "nyt"]}, fed={"min_clients": 2})
    with pytest.raises(FedoaError, match="round 1: 1 of 3 sampled clients sent a valid update") as e:
        run_simulation(cfg, tmp_path / "run", progress=False)
    assert e.value.exit_code == 1 and not (tmp_path / "run" / "results.json").exists()


def test_dp_with_zero_noise_is_the_plain_run_and_with_noise_reports_the_accountants_epsilon(tmp_path):
    plain = run_simulation(vader_tiny_config(), tmp_path / "plain", progress=False, reports=False)
    zero = run_simulation(vader_tiny_config(dp={"noise_multiplier": 0.0, "clip_norm": 0.01}), tmp_path / "zero",
                          progress=False, reports=False)
    a, b = _global(tmp_path / "plain"), _global(tmp_path / "zero")
    assert all(torch.equal(a[k], b[k]) for k in a) and "dp" not in zero.to_json() and "dp" not in plain.to_json()

    noisy = run_simulation(vader_tiny_config(dp={"noise_multiplier": 1.1, "clip_norm": 0.5}), tmp_path / "dp",
                           progress=False)
    c = _global(tmp_path / "dp")
    assert any(not torch.equal(a[k], c[k]) for k in a)
    dp = noisy.to_json()["dp"]
    assert dp["epsilon_per_round"] == pytest.approx([epsilon(1.1, 1.0, r, 1e-5) for r in (1, 2)])
    assert dp["epsilon"] == dp["epsilon_per_round"][-1]
    audit = [json.loads(line) for line in (tmp_path / "dp" / "audit.jsonl").read_text().splitlines()]
    assert all(line["dp_noise_std"] == pytest.approx(1.1 * 0.5 / 3) for line in audit)
    assert "epsilon" in (tmp_path / "dp" / "report.md").read_text()


def test_a_non_finite_loss_stops_the_run_and_publishes_nothing(tmp_path):
    # a float16 base and an absurd learning rate: the first step overflows the next forward pass
    cfg = vader_tiny_config(train={"lr": 1e30}, model={"dtype": "float16"})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text('{"earlier": true}')
    with pytest.raises(FedoaError, match="non-finite training loss") as e:
        run_simulation(cfg, tmp_path / "run", progress=False)
    assert e.value.exit_code == 1
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == {"earlier": True}


# ----------------------------------------------------------------------------- bounds nobody can move


def test_with_two_clients_a_scaled_update_is_rejected():
    """The median of the round included the attacker: with 2 uploads a x1e6 update always passed."""
    honest, hostile = up("honest", 0.1), up("hostile", 0.1 * 1e6)
    verdicts = {v.client: v for v in validate([honest, hostile], G, {"honest": 8, "hostile": 8}, TrustConfig())}
    assert verdicts["honest"].accepted
    assert not verdicts["hostile"].accepted and "median of the round's other uploads" in verdicts["hostile"].reason


def test_a_colluding_minority_is_rejected_and_the_honest_majority_kept():
    ups = [up("h1", 0.1), up("h2", 0.12), up("h3", 0.09), up("x1", 500.0), up("x2", 500.0)]
    verdicts = {v.client: v.accepted for v in validate(ups, G, {u.client: 8 for u in ups}, TrustConfig())}
    assert verdicts == {"h1": True, "h2": True, "h3": True, "x1": False, "x2": False}


def test_a_colluding_minority_is_bounded_by_the_honest_norms_whatever_its_scale():
    """2 colluders of 5, scaled together: whatever passes is at most norm_factor x the largest honest norm."""
    honest = [up("h1", 0.1), up("h2", 0.12), up("h3", 0.09)]
    largest = max(change_norm(u.state, G) for u in honest)
    accepted_scales = []
    for scale in (0.5, 0.9, 1.0, 1.15, 2.0, 500.0, 1e6):
        ups = honest + [up("x1", scale), up("x2", scale)]
        verdicts = validate(ups, G, {u.client: 8 for u in ups}, TrustConfig())
        assert all(v.accepted for v in verdicts if v.client.startswith("h"))
        for v in verdicts:
            if v.client.startswith("x") and v.accepted:
                assert v.norm <= TrustConfig().norm_factor * largest
                accepted_scales.append(scale)
    assert 1.0 in accepted_scales and 1.15 not in accepted_scales  # the bar: 10 x the median of the others (0.11)


def test_a_colluding_majority_is_not_stopped_by_the_bounds_in_its_first_round():
    """The documented limit: 3 colluders of 5 make the median; nothing relative can tell them apart."""
    ups = [up("h1", 0.1), up("h2", 0.12), up("x1", 500.0), up("x2", 500.0), up("x3", 500.0)]
    verdicts = validate(ups, G, {u.client: 8 for u in ups}, TrustConfig())
    assert all(v.accepted for v in verdicts)  # no history yet: the majority's huge update is aggregated
    later = validate(ups, G, {u.client: 8 for u in ups}, TrustConfig(), history=[0.4, 0.35, 0.42])
    assert [v.client for v in later if not v.accepted] == ["x1", "x2", "x3"]  # a jump far beyond earlier rounds
    creeping = [up("h1", 0.1), up("h2", 0.12)] + [up(f"x{i}", 1.0) for i in range(3)]  # within 10 x history
    assert all(v.accepted for v in validate(creeping, G, {u.client: 8 for u in creeping}, TrustConfig(),
                                            history=[0.4, 0.35, 0.42]))


def test_the_derived_absolute_bound_comes_from_earlier_rounds_and_catches_a_coordinated_round():
    ups = [up(f"x{i}", 50.0) for i in range(3)]  # every upload of the round equally huge: no relative check fires
    declared = {u.client: 8 for u in ups}
    assert all(v.accepted for v in validate(ups, G, declared, TrustConfig()))  # round 1: no history yet
    verdicts = validate(ups, G, declared, TrustConfig(), history=[0.5, 0.6, 0.55])
    assert not any(v.accepted for v in verdicts) and "bound from earlier rounds" in verdicts[0].reason
    fixed = validate(ups, G, declared, TrustConfig(max_norm=1000.0), history=[0.5])  # an explicit bound wins
    assert all(v.accepted for v in fixed)


def test_client_metrics_cannot_overwrite_the_servers_keys():
    from fedoa.algorithms.base import Phase
    from fedoa.runtime.common import phase_line

    line = phase_line(3, "movie", Phase("global", 2, 8, 0.5, {"round": 99.0, "client": 1.0, "task_loss": 0.4,
                                                              "client.round": 5.0}))
    assert line["round"] == 3 and line["client"] == "movie" and line["phase"] == "global"
    assert line["client.round"] in (99.0, 5.0) and line["client.client"] == 1.0 and line["task_loss"] == 0.4


def test_every_test_that_docs_privacy_and_trust_cites_exists():
    """The doc states only what tests show: each test it names for a promise is a test of the suite."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cited = set(re.findall(r"\b(test_[a-z0-9_]+)\b", (root / "docs" / "privacy-and-trust.md").read_text()))
    defined = {m for p in (root / "tests").rglob("test_*.py")
               for m in [p.stem, *re.findall(r"^def (test_[a-z0-9_]+)", p.read_text(), flags=re.M)]}
    assert len(cited) >= 30 and not cited - defined, sorted(cited - defined)
