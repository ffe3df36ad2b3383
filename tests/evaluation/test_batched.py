"""Batched evaluation (``runtime.batch_clients`` on) scores what sequential evaluation scores: every
model in slots, one pass per batch of records (tiny model, float32, LoRA dropout 0).

Outcomes must be equal; option log-likelihoods agree within 1e-5 relative (the slot path adds LoRA
outputs with batched matmuls and pads each pass to its longest prompt over more rows: rounding only).
"""
import json

import pytest
import torch

from fedoa.algorithms import make_algorithm
from fedoa.data.prompts import PromptEncoder
from fedoa.data.records import make_record
from fedoa.evaluation import batched
from fedoa.evaluation.batched import slot_option_scores
from fedoa.evaluation.scoring import option_scores, prepare_set
from fedoa.model import slots
from fedoa.model.adapters import GLOBAL, PERSONAL
from fedoa.model.mixing import InstanceWeights, activate_both, arm_instance_mix, mixer_of, mixer_off, prompt_features
from fedoa.model.slots import SlotBank, SlotModel
from fedoa.runtime.common import eval_kinds
from fedoa.runtime.inprocess import InProcess, run_simulation
from fedoa.runtime.session import build_model, open_session
from fedoa.testing import synthetic_clients, tiny_config

RECORDS = [
    make_record("Is this good?\nOPTIONS:\n- yes indeed it is\n- no\n- maybe so", "no"),
    make_record("A much longer question about the world?\nOPTIONS:\n- NDRF.\n- National Disaster Response Force.",
                "NDRF."),
    make_record("Short?\nOPTIONS:\n- negative\n- positive", "positive"),
]


def trained_like(am, seed: int):
    """An adapter whose B is not zero (a fresh one adds nothing, so every model would agree)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in am.fresh_state(seed).items()}


def activated_scores(am, ps, pad, g, p, own, fixed):
    """Option scores of ``own * P + fixed * G`` (P, G, or neither alone) through PEFT's own slots."""
    mixer_off(am)
    am.set(GLOBAL, g)
    am.set(PERSONAL, p)
    if own and fixed:
        activate_both(am)
        mixer_of(am).constant(fixed, own)
    else:
        am.use(PERSONAL if own else GLOBAL if fixed else None)
    try:
        return option_scores(am, ps.prompts, ps.options, pad)
    finally:
        mixer_off(am)
        am.use(GLOBAL)


def test_every_slot_model_scores_what_it_scores_activated(tiny):
    am, tok = tiny
    ps = prepare_set(PromptEncoder(tok, "alpaca", 256), "t", RECORDS)
    assert any(len(o) > 1 for opts in ps.options for o in opts)  # exercises the routed KV-cache continuation
    g, p1, p2 = trained_like(am, 1), trained_like(am, 2), trained_like(am, 3)
    # (own adapter, own weight, weight on G): G alone, a personal adapter, the base model, FedLoRA's
    # sum P + G, FedDPA's fixed mix 0.3 P + 0.7 G
    cases = [(g, 1.0, 0.0), (p1, 1.0, 0.0), (None, 1.0, 0.0), (p2, 1.0, 1.0), (p1, 0.3, 0.7)]
    models = [SlotModel(own, w, f) for own, w, f in cases]
    zeros = {k: torch.zeros_like(v) for k, v in g.items()}
    bank = SlotBank(am, [zeros if m.own is None else m.own for m in models], trainable=False, fixed=g)
    got = slot_option_scores(am, bank, models, list(range(len(models))), ps.prompts, ps.options, tok.pad_token_id)
    for (own, w, f), batched in zip(cases, got):
        want = activated_scores(am, ps, tok.pad_token_id, g, own if own is not None else zeros,
                                w if own is not None else 0.0, f)
        for b_row, w_row in zip(batched, want):
            assert b_row == pytest.approx(w_row, rel=1e-5)
            assert max(range(len(b_row)), key=b_row.__getitem__) == max(range(len(w_row)), key=w_row.__getitem__)
    # the models differ, so a slot routed to the wrong rows would show
    flat = [[x for row in model for x in row] for model in got]
    assert all(max(abs(x - y) for x, y in zip(a, b)) > 1e-2 for a, b in zip(flat, flat[1:]))


@pytest.mark.parametrize("feature_slot, on, clip", [(PERSONAL, GLOBAL, False), (None, PERSONAL, True)])
def test_an_instance_wise_mix_scores_what_it_scores_armed(tiny, feature_slot, on, clip):
    """FedDPA's inference (FedOA's mixed model): per-row weights from each input's features under P
    alone (or the base model) and the client's anchors, beside a plain model in the same pass."""
    am, tok = tiny
    pad = tok.pad_token_id
    encoder = PromptEncoder(tok, "alpaca", 256)
    ps = prepare_set(encoder, "t", RECORDS)
    train = [encoder.encode_train(r).prompt for r in synthetic_clients(("a",), n_train=6)[0].train]
    g, p = trained_like(am, 4), trained_like(am, 5)
    kw = {"k": 3, "scale": 0.9, "seed": 0, "on": on, "feature_slot": feature_slot, "clip": clip}
    mixer_off(am)
    am.set(GLOBAL, g)
    am.set(PERSONAL, p)
    arm_instance_mix(am, train, pad, **kw)
    try:
        want = option_scores(am, ps.prompts, ps.options, pad)
    finally:
        mixer_off(am)
        am.use(GLOBAL)
    anchors = prompt_features(am, feature_slot, train, pad)
    models = [SlotModel(g), SlotModel(p, instance=InstanceWeights(am, anchors, **kw))]
    zeros = {k: torch.zeros_like(v) for k, v in g.items()}
    bank = SlotBank(am, [g, p, zeros], trainable=False, fixed=g)
    got = slot_option_scores(am, bank, models, [0, 1], ps.prompts, ps.options, pad, zero=2)
    for b_row, w_row in zip(got[1], want):
        assert b_row == pytest.approx(w_row, rel=1e-5)
    # the weights are not constant: the mix differs from G alone and from P alone
    flat = [x for row in got[1] for x in row]
    assert max(abs(x - y) for x, y in zip(flat, [x for row in got[0] for x in row])) > 1e-2


def config(method: str, batch: str, **sections):
    cfg = tiny_config(lora={"dropout": 0.0}, runtime={"batch_clients": batch}, fed={"client_fraction": 1.0},
                      eval={"zero_shot": True, "batch_size": 3}, **sections)
    cfg.method = method
    return cfg


@pytest.fixture(scope="module")
def clients():
    return [synthetic_clients((n,), n_train=k, n_test=7, seed=i)[0] for i, (n, k) in enumerate({"a": 4, "b": 6, "c": 5}.items())]


#: methods whose training runs one client at a time in both modes (FedLoRA, pFedMe cannot be batched):
#: the two runs train bit-identical adapters, so results.json differs only by how it was evaluated.
#: FedLoRA's personal model is base + P + G (the shared adapter in every row); pFedMe's plain P and G.
@pytest.mark.parametrize("method, sections", [("fedlora", {"fedlora": {"global_eval": True}}), ("pfedme", {})])
def test_a_batched_evaluation_writes_the_results_a_sequential_one_writes(tmp_path, clients, method, sections):
    results, used_slots = {}, {}
    for batch in ("off", "on"):
        cfg = config(method, batch)
        for section, values in sections.items():
            for k, v in values.items():
                setattr(cfg.settings_of(section), k, v)
        model = build_model(cfg)  # its own model: whether slot hooks were ever installed tells the paths apart
        run_simulation(cfg, tmp_path / batch, progress=False, session=open_session(cfg, clients=clients, model=model),
                       reports=False)
        results[batch] = json.loads((tmp_path / batch / "results.json").read_text())
        used_slots[batch] = slots._LAYERS.get(model[0]) is not None
    assert used_slots == {"off": False, "on": True}
    off, on = results["off"], results["on"]
    assert set(off["records"]) == set(eval_kinds(config(method, "off"), make_algorithm(config(method, "off"))))
    assert on["records"] == off["records"]  # every model's outcome on every record
    assert any("0" in hits for kind in off["records"].values() for row in kind.values() for hits in row.values())
    for key in ("matrices", "summary", "per_client"):
        assert on[key] == off[key], key


def states_of(session, algo, seed: int):
    """Trained-like personal adapters for every client, and a trained-like global adapter."""
    states = {}
    for i, c in enumerate(session.clients):
        states[c.name] = algo.init_client(session.am, c.name)
        if PERSONAL in states[c.name]:
            states[c.name][PERSONAL] = trained_like(session.am, seed + i)
    return states, trained_like(session.am, seed + 100)


#: every kind of model on the same adapters: FedOA's personal, mixed (instance-wise weights) and global
#: models, FedDPA's fixed and instance-wise mixes, FedIT's global adapter, and zero-shot
#: with eval.metric "both" and ROUGE, the options are batched and each model generates alone
GENERATING = {"metric": "both", "max_new_tokens": 3, "rouge": True, "rouge_num_beams": 2, "rouge_max_new_tokens": 3}


@pytest.mark.parametrize("method, mix, evaluation, max_rows", [
    ("fedoa", None, {}, None), ("feddpa", "fixed", {}, None), ("feddpa", "instance", {}, None),
    ("fedit", None, {}, None), ("fedoa", None, GENERATING, None),
    ("fedoa", None, {}, 7)])  # 7 rows at most: the 8 models take 4 passes of 2 per batch of 3 records
def test_batched_and_sequential_evaluation_score_the_same_models_alike(clients, monkeypatch, method, mix, evaluation,
                                                                       max_rows):
    if max_rows:
        monkeypatch.setattr(batched, "MAX_ROWS", max_rows)
    cfg = config(method, "off")
    if mix:
        cfg.settings_of("feddpa").mix = mix
    for k, v in evaluation.items():
        setattr(cfg.eval, k, v)
    session = open_session(cfg, clients=clients, model=build_model(cfg))
    algo = make_algorithm(cfg)
    transport = InProcess(session, progress=False)
    transport.open(algo)
    states, global_state = states_of(session, algo, 7)
    transport.restore(states, {})
    kinds = eval_kinds(cfg, algo)
    scores = {}
    for batch in ("off", "on"):
        session.cfg.runtime.batch_clients = batch
        scores[batch] = transport.evaluate(session.plan, kinds, global_state)[1]
    assert scores["on"] == scores["off"]
    if evaluation:
        assert all(v.generation_hits and v.rouge for row in scores["on"]["mixed"].values() for v in row.values())
    per_kind = {k: [v.options_hits for row in scores["on"][k].values() for v in row.values()] for k in kinds}
    assert len({tuple(v) for v in per_kind.values()}) > 1  # the models answer differently
