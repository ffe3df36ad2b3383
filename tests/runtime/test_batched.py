"""The batched client engine gives every method's clients the adapters that training them one by one
gives: two rounds, clients of unequal sizes, partial sampling (tiny model, float32, no dropout).

Tolerance 1e-5 relative per adapter file for every method, and per tensor for all but the three of
LOOSER (5e-5, explained there), at lr 1e-3: the two paths pad and group rows differently, so
their float rounding differs (~1e-7), and AdamW's per-element normalisation turns rounding in
near-zero gradient elements into whole steps; at the tiny configs' lr 1e-2 that drift reaches
~3e-4 after two rounds, at 1e-3 it stays under 1e-5, while a wrong schedule, mask or objective
moves adapters by 1e-2 or more.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from fedoa.algorithms.base import batched_updates
from fedoa.runtime.inprocess import run_simulation
from fedoa.runtime.session import build_model, open_session
from fedoa.training.joint import SlotJob, train_jobs
from tests.support import synthetic_clients, tiny_config

SIZES = {"a": 3, "b": 5, "c": 8, "d": 11}  # 1 to 3 optimizer steps of 4, last micro-batches short
#: FedOA's personal step starts in round 2 (the reference's schedule): in round 1 a fresh P and a fresh
#: G have the same features, where the Frobenius distance has no gradient (its kink at 0), and either
#: path's rounding noise alone picks a direction there
METHODS = {
    "fedit": {}, "local": {}, "fedprox": {"fedprox": {"mu": 0.5}}, "ditto": {"ditto": {"lam": 0.5}},
    "fedoa": {"fed": {"personal_start_round": 2}}, "fedsdr": {}, "feddpa": {},
    "fedoa-global-step": {"fed": {"personal_start_round": 2}, "fedoa": {"target_features": "global_step"}},
    "perada": {"perada": {"pool": "none"}},
}


#: Per tensor, three methods agree within 5e-5, not 1e-5 (per adapter every method is within 2.3e-7). Measured on this setup (1 CPU thread, as tests/conftest.py
#: sets): fedoa 1.52e-5, fedoa-global-step 3.62e-5, perada 1.55e-5; every other method under 1e-5 (at 2
#: threads fedit 3.8e-6, ditto 7.7e-6). It is rounding, magnified, not an order of reduction that one path
#: could copy: the LoRA layers themselves round differently (a bmm over stacked slots vs PEFT's two matmuls,
#: ~1e-7 relative per gradient element), and the losses and regularizers in metrics.jsonl agree (checked below).
#: - FedOA: the worst tensor (client c's P, layer 1 v_proj lora_B) is ill-conditioned in itself: the
#:   *sequential* run against itself with lr x (1 + 1e-6) differs there by 1.5e-5 (separate pass) and
#:   1.9e-5 (global-step targets), and the batched run against itself at 1 vs 2 threads (only the matmuls'
#:   summation order changes) by 1.6e-5 and 2.4e-5 (at 2 threads batched vs sequential: 7.8e-6 and 5.8e-5).
#:   Round-2 targets h_G are the round-1 G's features (G differs by ~4e-6), and in that B the task and
#:   regularizer gradients nearly cancel for a few elements, where AdamW's per-element normalisation turns
#:   rounding into steps. One regularized phase alone agrees within 1e-6
#:   (test_one_regularized_phase_matches_train_slot).
#: - PerAda (P starts as G every first round, pulled toward it): one element of 256 carries it (client a's
#:   P, layer 1 q_proj lora_B: 3.96e-7 of a 3.99e-7 difference, tensor norm 2.6e-2); the other 255 agree
#:   within 5e-8, the same at 1 and 2 threads. A wrong schedule, mask or proximal weight would move every
#:   element (and a uniform lr change of 1e-6 moves PerAda's adapters by 1.1e-6 only, no magnification):
#:   that one element's update is decided by its gradient's last bits.
LOOSER = {"fedoa": 5e-5, "fedoa-global-step": 5e-5, "perada": 5e-5}


def config(method: str, batch: str, overrides: dict):
    cfg = tiny_config(fed={"rounds": 2, "client_fraction": 0.75}, lora={"dropout": 0.0},
                      eval={"zero_shot": False, "ood": False}, runtime={"batch_clients": batch})
    cfg.method = method.removesuffix("-global-step")
    cfg.train.lr = 1e-3
    for section, values in overrides.items():
        target = cfg.settings_of(section) or getattr(cfg, section)
        for k, v in values.items():
            setattr(target, k, v)
    return cfg


@pytest.fixture(scope="module")
def model():
    return build_model(config("fedit", "off", {}))


@pytest.fixture(scope="module")
def clients():
    return [synthetic_clients((n,), n_train=k, n_test=2, seed=i)[0] for i, (n, k) in enumerate(SIZES.items())]


def run(tmp_path, model, clients, method, batch):
    cfg = config(method, batch, METHODS[method])
    out = tmp_path / f"{method}-{batch}"
    run_simulation(cfg, out, progress=False, session=open_session(cfg, clients=clients, model=model), reports=False)
    tensors = {p.relative_to(out).as_posix(): load_file(str(p)) for p in sorted(out.glob("adapters/**/*.safetensors"))}
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return tensors, [x for x in lines if x["phase"] in ("personal", "global")]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


def whole(adapter: dict) -> torch.Tensor:
    """An adapter file's tensors as one vector (in key order)."""
    return torch.cat([adapter[k].flatten() for k in sorted(adapter)])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_batched_clients_train_the_adapters_sequential_training_gives(tmp_path, model, clients, method):
    seq, seq_lines = run(tmp_path, model, clients, method, "off")
    bat, bat_lines = run(tmp_path, model, clients, method, "on")
    assert seq.keys() == bat.keys() and seq
    # each adapter (every file: the global adapter, each client's personal one) within 1e-5 relative,
    # every method (measured: 6e-8 to 2.3e-7); and each tensor of it within 1e-5, or LOOSER's 5e-5
    adapter = max(relative(whole(bat[f]), whole(seq[f])) for f in seq)
    assert adapter < 1e-5, f"{method}: a batched adapter differs from the sequential one by {adapter:.2e} (relative)"
    worst = max(relative(bat[f][k], seq[f][k]) for f in seq for k in seq[f])
    bound = LOOSER.get(method, 1e-5)
    assert worst < bound, f"{method}: a batched tensor differs from the sequential one by {worst:.2e} (relative)"
    # the same phases, steps, examples and (within rounding) the same losses and regularizers
    key = [(x["round"], x["client"], x["phase"]) for x in seq_lines]
    assert key == [(x["round"], x["client"], x["phase"]) for x in bat_lines]
    for s, b in zip(seq_lines, bat_lines):
        assert (s["steps"], s["examples"]) == (b["steps"], b["examples"])
        assert {k for k in s if k != "seconds"} == {k for k in b if k != "seconds"}
        for k in ("task_loss", "reg", "prox", "reg_last"):
            if k in s:
                assert b[k] == pytest.approx(s[k], rel=1e-4, abs=1e-6), (method, s["client"], k)


def test_a_finished_client_does_not_move_while_the_others_train(model, clients):
    am, encoder = model
    cfg = config("fedit", "on", {})
    start = am.fresh_state(3)
    short, long = (encoder.encode_train(r) for r in (clients[0].train, clients[3].train)), None
    short = [encoder.encode_train(r) for r in clients[0].train]  # 1 step
    long = [encoder.encode_train(r) for r in clients[3].train]  # 3 steps
    pad = encoder.tokenizer.pad_token_id
    alone = train_jobs(am, [SlotJob("g", start, short, "s")], cfg.train, pad)[0][0]
    together = train_jobs(am, [SlotJob("g", start, short, "s"), SlotJob("g", start, long, "l")], cfg.train, pad)
    assert together[0][1].steps == 1 and together[1][1].steps == 3
    # two more joint steps ran after the short job's last one: its weights are still its own result
    assert all(torch.allclose(together[0][0][k], alone[k], rtol=0, atol=1e-7) for k in alone)
    assert any(not torch.allclose(together[1][0][k], alone[k]) for k in alone)


def test_methods_that_cannot_batch_say_so(model, clients):
    """pFedMe and FedLoRA run one client at a time (docs/batched.md)."""
    from fedoa.algorithms import make_algorithm

    for method in ("pfedme", "fedlora"):
        cfg = config(method, "on", {})
        session = open_session(cfg, clients=clients, model=model)
        ctxs = [session.context(c.name, make_algorithm(cfg).init_client(model[0], c.name)) for c in clients]
        algo = make_algorithm(cfg)
        assert batched_updates(algo, ctxs, algo.init_global(model[0]), 1) is None, method


def test_one_regularized_phase_matches_train_slot(model, clients):
    """FedOA's personal step for three clients of unequal sizes in one joint loop vs ``train_slot``
    per client, from the same start and targets: the engine itself adds only rounding."""
    from fedoa.algorithms.fedoa import feature_regularized
    from fedoa.algorithms.regularizers import PER_GROUP
    from fedoa.model.adapters import GLOBAL, PERSONAL
    from fedoa.training.joint import SlotReg
    from fedoa.training.loop import train_slot
    from fedoa.training.losses import example_features

    am, encoder = model
    cfg, pad = config("fedoa", "on", {}), encoder.tokenizer.pad_token_id
    gen = torch.Generator().manual_seed(0)
    am.set(GLOBAL, {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in am.fresh_state(1).items()})
    start, jobs, alone = am.fresh_state(0), [], []
    for c in clients[1:]:
        data = [encoder.encode_train(r) for r in c.train]
        target = example_features(am, GLOBAL, data, "last_token", 2, pad)
        am.set(PERSONAL, start)
        train_slot(am, PERSONAL, data, cfg.train, feature_regularized(target, 0.5, "frobenius", "last_token"), c.name, pad)
        alone.append(am.get(PERSONAL))
        jobs.append(SlotJob("personal", start, data, c.name, SlotReg("last_token", 0.5, PER_GROUP["frobenius"], target)))
    for (state, result), expected in zip(train_jobs(am, jobs, cfg.train, pad), alone):
        assert "reg" in result.metrics
        assert max(relative(state[k], expected[k]) for k in expected) < 1e-6


def test_gradient_checkpointing_recomputes_through_the_slots(model, clients):
    """The backward pass recomputes the forward under checkpointing: the slots must still be routed then."""
    cfg = config("fedit", "on", {})
    cfg.model.gradient_checkpointing = True
    checkpointed, encoder = build_model(cfg)
    pad = encoder.tokenizer.pad_token_id
    data = [[encoder.encode_train(r) for r in c.train] for c in clients[:2]]
    start = model[0].fresh_state(2)
    got = train_jobs(checkpointed, [SlotJob("g", start, d, str(i)) for i, d in enumerate(data)], cfg.train, pad)
    want = train_jobs(model[0], [SlotJob("g", start, d, str(i)) for i, d in enumerate(data)], cfg.train, pad)
    for (a, _), (b, _) in zip(got, want):
        assert max(relative(a[k], b[k]) for k in b) < 1e-6
