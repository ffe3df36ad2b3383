import math

import pytest
import torch

from fedoa.algorithms.base import ClientContext
from fedoa.algorithms.feddpa import FedDPA, under_training_mix
from fedoa.data.batching import collate
from fedoa.data.prompts import PromptEncoder
from fedoa.evaluation.scoring import left_pad, option_scores
from fedoa.model.adapters import GLOBAL, PERSONAL
from fedoa.model.mixing import (
    InstanceWeights,
    activate_both,
    mixer_of,
    prompt_features,
    sample_for_row,
)
from fedoa.training.losses import response_loss, task_objective
from tests.support import synthetic_clients, tiny_config


def _noisy(am, seed, scale=0.3):
    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in am.fresh_state(seed).items()}


def _setup(tiny):
    am, tok = tiny
    client = synthetic_clients(("a",), n_train=8)[0]
    enc = PromptEncoder(tok, "plain", 64)
    train = [enc.encode_train(r) for r in client.train]
    return am, tok, enc, train, _noisy(am, 1), _noisy(am, 2)


def _lora_layers(am):
    from peft.tuners.lora.layer import LoraLayer

    return [m for m in am.peft.modules() if isinstance(m, LoraLayer)]


@torch.no_grad()
def _manual_hidden(am, ids, mask, w_g, w_p, positions=None):
    """One example, both slots active, PEFT's own scaling multiplied by (w_g, w_p): no hooks."""
    mixer_of(am).disarm()
    am.use(GLOBAL)
    am.peft.base_model.set_adapter([GLOBAL, PERSONAL], inference_mode=True)
    layers = _lora_layers(am)
    saved = [(l.scaling[GLOBAL], l.scaling[PERSONAL]) for l in layers]
    try:
        for l, (sg, sp) in zip(layers, saved):
            l.scaling[GLOBAL], l.scaling[PERSONAL] = sg * w_g, sp * w_p
        return am.hidden(ids, mask, position_ids=positions)
    finally:
        for l, (sg, sp) in zip(layers, saved):
            l.scaling[GLOBAL], l.scaling[PERSONAL] = sg, sp
        am.use(GLOBAL)


def test_instance_weight_by_hand(tiny):
    am, *_ = _setup(tiny)
    anchors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])
    feats = torch.tensor([[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    ids, mask = torch.tensor([[5, 6], [7, 8]]), torch.ones(2, 2, dtype=torch.long)
    # k = 3 >= 3 anchors: every anchor. row 0: cos = 1/sqrt2, 1/sqrt2, -1/sqrt2 -> mean 1/(3 sqrt2);
    # row 1: cos = -1, 0, 1 -> mean 0
    w = InstanceWeights(am, anchors, k=3, scale=0.5, seed=0).row_weight(feats, ids, mask)
    assert w[0].item() == pytest.approx(0.5 / (3 * math.sqrt(2)), rel=1e-6)
    assert w[1].item() == pytest.approx(0.0, abs=1e-7)
    # a negative similarity is kept (the reference does not clip) unless clip is asked for
    w = InstanceWeights(am, anchors[:1], k=3, scale=0.5, seed=0).row_weight(-feats[:1], ids[:1], mask[:1])
    assert w.item() == pytest.approx(-0.5 / math.sqrt(2), rel=1e-6)
    clipped = InstanceWeights(am, anchors[:1], k=3, scale=0.5, seed=0, clip=True).row_weight(-feats[:1], ids[:1], mask[:1])
    assert clipped.item() == 0.0


def test_instances_are_drawn_per_input_and_seeded():
    a = sample_for_row([1, 2, 3], 100, 5, seed=0)
    assert a == sample_for_row([1, 2, 3], 100, 5, seed=0) and len(set(a)) == 5
    assert a != sample_for_row([1, 2, 4], 100, 5, seed=0)  # another input, another draw
    assert a != sample_for_row([1, 2, 3], 100, 5, seed=1)
    assert sample_for_row([9], 3, 5, 0) == [0, 1, 2]


def _arm_instance(tiny, scale=1.0, on="global", features="personal"):
    am, tok, enc, train, g, p = _setup(tiny)
    cfg = tiny_config(feddpa={"sim_scale": scale, "instance_weight_on": on, "similarity_features": features,
                              "num_instances": 3})
    ctx = ClientContext("a", am, train, {PERSONAL: p}, cfg, tok.pad_token_id)
    FedDPA(cfg).setup_eval(ctx, "personal", g)
    slot = PERSONAL if features == "personal" else None
    anchors = prompt_features(am, slot, [e.prompt for e in train], tok.pad_token_id)
    return am, tok, enc, train, anchors, cfg, slot


@pytest.mark.parametrize("on, features", [("global", "personal"), ("personal", "base")])
def test_instance_mix_equals_the_manual_mix_per_row(tiny, on, features):
    am, tok, enc, train, anchors, cfg, slot = _arm_instance(tiny, scale=1.0, on=on, features=features)
    prompts = [train[0].prompt, tuple(tok("Completely unrelated words about a train timetable:")["input_ids"])]
    ids, mask = left_pad(prompts, tok.pad_token_id)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        mixed = am.hidden(ids, mask, position_ids=positions)
    weights = mixer_of(am).batch_weights.clone()

    # the weights by hand: each prompt's features alone (under P alone, or the bare base model),
    # mean cosine to the 3 training prompts drawn for that prompt
    feats = prompt_features(am, slot, prompts, tok.pad_token_id)
    for b in range(2):
        idx = sample_for_row(list(prompts[b]), len(train), 3, cfg.seed)
        sims = [torch.nn.functional.cosine_similarity(feats[b], anchors[i], dim=0).item() for i in idx]
        w = sum(sims) / len(sims)
        expected = (w, 1 - w) if on == "global" else (1 - w, w)
        assert weights[b].tolist() == pytest.approx(expected, abs=1e-5)
    assert abs(weights[0, 1] - weights[1, 1]) > 1e-3, "the two rows should get different weights"

    for b in range(2):
        n = len(prompts[b])
        one = torch.tensor([prompts[b]])
        manual = _manual_hidden(am, one, torch.ones_like(one), weights[b, 0].item(), weights[b, 1].item())
        torch.testing.assert_close(mixed[b, -n:], manual[0], rtol=1e-4, atol=1e-5)
    am.use(GLOBAL)


def test_option_scores_follow_rows_through_the_kv_cache(tiny):
    am, tok, enc, train, *_ = _arm_instance(tiny, scale=1.0)
    prompts = [train[1].prompt, tuple(tok("Another, rather different question?\nAnswer:\n")["input_ids"])]
    opts = [enc.answer_ids(o) for o in ("very positive indeed", "negative", "quite negative overall")]
    assert sum(len(o) > 1 for o in opts) >= 2
    options = [opts, opts[::-1]]
    mixed = option_scores(am, prompts, options, tok.pad_token_id)
    weights = mixer_of(am).batch_weights.clone()
    assert abs(weights[0, 1] - weights[1, 1]) > 1e-3

    for b in range(2):
        for k, o in enumerate(options[b]):
            seq = torch.tensor([prompts[b] + o])
            h = _manual_hidden(am, seq, torch.ones_like(seq), weights[b, 0].item(), weights[b, 1].item())
            logp = torch.log_softmax(am.logits(h[0]).float(), -1)
            start = len(prompts[b]) - 1
            expected = sum(logp[start + i, t].item() for i, t in enumerate(o))
            assert mixed[b][k] == pytest.approx(expected, abs=1e-4)
    am.use(GLOBAL)


@pytest.mark.parametrize("mix, w", [("fixed", (0.3, 0.7)), ("sum", (1.0, 1.0))])
def test_fixed_and_sum_mixes(tiny, mix, w):
    am, tok, enc, train, g, p = _setup(tiny)
    cfg = tiny_config(feddpa={"mix": mix, "fixed_weight": 0.3})
    FedDPA(cfg).setup_eval(ClientContext("a", am, train, {PERSONAL: p}, cfg, tok.pad_token_id), "personal", g)
    one = torch.tensor([train[2].prompt])
    with torch.no_grad():
        got = am.hidden(one, torch.ones_like(one))
    torch.testing.assert_close(got, _manual_hidden(am, one, torch.ones_like(one), *w), rtol=1e-4, atol=1e-5)


def test_hooks_are_inert_outside_the_armed_mix(tiny):
    am, tok, enc, train, g, p = _setup(tiny)
    one = torch.tensor([train[3].prompt])
    mask = torch.ones_like(one)
    am.set(GLOBAL, g)
    am.use(GLOBAL)
    with torch.no_grad():
        plain = am.hidden(one, mask)
    cfg = tiny_config(feddpa={"mix": "fixed", "fixed_weight": 0.2})
    algo = FedDPA(cfg)
    ctx = ClientContext("a", am, train, {PERSONAL: p}, cfg, tok.pad_token_id)
    algo.setup_eval(ctx, "personal", g)  # arms the mix (and installs the hooks)
    am.use(GLOBAL)  # any single slot: the hooks stand aside
    with torch.no_grad():
        assert torch.equal(am.hidden(one, mask), plain)
    algo.setup_eval(ctx, "global", g)
    with torch.no_grad():
        assert torch.equal(am.hidden(one, mask), plain)


def _training_step(am, batch, detach_global: bool):
    """Loss and P's gradients under 0.5 G + 0.5 P, G's output detached or not."""
    am.use(PERSONAL)
    params = am.trainable(PERSONAL)
    activate_both(am, trainable=PERSONAL)
    mixer_of(am).constant(0.5, 0.5, detach_global=detach_global)
    loss, _ = response_loss(am, batch)
    loss.backward()
    grads = [q.grad.clone() for q in params]
    for q in params:
        q.grad = None
    mixer_of(am).disarm()
    am.freeze()
    return loss.item(), grads


def test_personal_step_trains_p_under_half_p_plus_detached_half_g(tiny):
    am, tok, enc, train, g, p = _setup(tiny)
    am.set(GLOBAL, g)
    am.set(PERSONAL, p)
    batch = collate(train[:2], [0, 1], tok.pad_token_id)
    am.use(PERSONAL)
    params = am.trainable(PERSONAL)
    loss, _ = under_training_mix(task_objective, 0.5)(am, batch)
    loss.backward()
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in params)
    assert all(q.grad is None for q in am.params[GLOBAL].values())
    for q in params:
        q.grad = None
    am.freeze()
    with torch.no_grad():  # the loss is that of base + 0.5 G + 0.5 P
        manual = _manual_hidden(am, batch.input_ids, batch.attention_mask, 0.5, 0.5)
        logits = am.logits(manual[batch.loss_rows, batch.loss_cols]).float()
        expected = torch.nn.functional.cross_entropy(logits, batch.targets)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # G's output is detached: no gradient reaches earlier layers' P through G's path
    l1, detached = _training_step(am, batch, detach_global=True)
    l2, attached = _training_step(am, batch, detach_global=False)
    assert l1 == pytest.approx(l2, rel=1e-6)
    assert any(not torch.allclose(a, b) for a, b in zip(detached, attached))
    am.use(GLOBAL)


def test_client_update_trains_p_uploads_g_and_leaves_no_mix_armed(tiny):
    am, tok, enc, train, g, _ = _setup(tiny)
    cfg = tiny_config(train={"max_steps": 1})
    algo = FedDPA(cfg)
    state = algo.init_client(am, "a")
    p0 = {k: v.clone() for k, v in state[PERSONAL].items()}
    ctx = ClientContext("a", am, train, state, cfg, tok.pad_token_id)
    update = algo.client_update(ctx, g, round_=1)
    assert [ph.phase for ph in update.phases] == ["personal", "global"]
    assert any(not torch.equal(p0[k], state[PERSONAL][k]) for k in p0)
    assert any(not torch.equal(g[k], update.state[k]) for k in g)
    assert not mixer_of(am).armed
    assert set(state) == {PERSONAL}
    assert set(algo.exported_adapters(state, update.state)) == {"global", "personal"}


def test_greedy_generation_uses_each_rows_weights(tiny):
    am, tok, enc, train, *_ = _arm_instance(tiny, scale=1.0)
    prompts = [train[4].prompt, tuple(tok("Completely unrelated words about a train timetable:")["input_ids"])]
    ids, mask = left_pad(prompts, tok.pad_token_id)
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None)
    with torch.no_grad():
        batched = am.generate(input_ids=ids, attention_mask=mask, **kw)[:, ids.shape[1]:]
    weights = mixer_of(am).batch_weights.clone()
    assert abs(weights[0, 1] - weights[1, 1]) > 1e-3
    mix = mixer_of(am)
    for b in range(2):
        one = torch.tensor([prompts[b]])
        mix.constant(weights[b, 0].item(), weights[b, 1].item())  # the same weights, one row at a time
        with torch.no_grad():
            alone = am.generate(input_ids=one, attention_mask=torch.ones_like(one), **kw)[0, one.shape[1]:]
        assert batched[b].tolist() == alone.tolist()
    mix.disarm()
    am.use(GLOBAL)
