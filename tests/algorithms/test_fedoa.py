import pytest
import torch

from fedoa.algorithms.base import ClientContext
from fedoa.algorithms.fedoa import FedOA, feature_regularized
from fedoa.algorithms.regularizers import distance
from fedoa.data.batching import collate
from fedoa.data.prompts import PromptEncoder
from fedoa.model.adapters import GLOBAL, PERSONAL
from fedoa.training.losses import example_features, features, response_loss
from tests.support import synthetic_clients, tiny_config


def approx(x):
    return pytest.approx(x, rel=1e-5, abs=1e-6)


def _setup(tiny, cfg):
    am, tok = tiny
    client = synthetic_clients(("a",), n_train=8)[0]
    enc = PromptEncoder(tok, "plain", 64)
    train = [enc.encode_train(r) for r in client.train]
    g = {k: v + 0.02 * torch.randn_like(v) for k, v in am.fresh_state(1).items()}  # nonzero B
    return am, tok, train, g


def test_regularizer_value_and_gradient_reach_only_the_personal_adapter(tiny):
    cfg = tiny_config()
    am, tok, train, g = _setup(tiny, cfg)
    am.set(GLOBAL, g)
    am.set(PERSONAL, {k: v + 0.02 * torch.randn_like(v) for k, v in am.fresh_state(2).items()})
    target = example_features(am, GLOBAL, train, "last_token", 4, tok.pad_token_id)
    batch = collate(train[:4], [0, 1, 2, 3], tok.pad_token_id)

    am.use(PERSONAL)
    params = am.trainable(PERSONAL)
    loss, parts = feature_regularized(target, 0.5, "frobenius", "last_token")(am, batch)
    # the same value by hand: CE + 0.5 * ||h_P - h_G||_F over the micro-batch
    with torch.no_grad():
        ce, hidden = response_loss(am, batch)
        h_p = features(hidden, batch, "last_token")
        expected_reg = torch.sqrt(((h_p - target[:4]) ** 2).sum())
    assert parts["reg"] == approx(expected_reg.item())
    assert loss.item() == approx(ce.item() + 0.5 * expected_reg.item())
    loss.backward()
    assert all(p.grad is not None for p in params)
    assert any(p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in am.params[GLOBAL].values())
    assert all(p.grad is None for n, p in am.peft.named_parameters() if "lora" not in n)
    am.freeze()
    for p in params:
        p.grad = None


def test_client_update_trains_personal_then_global(tiny):
    cfg = tiny_config()
    am, tok, train, g = _setup(tiny, cfg)
    algo = FedOA(cfg)
    state = algo.init_client(am, "a")
    p0 = {k: v.clone() for k, v in state[PERSONAL].items()}
    ctx = ClientContext("a", am, train, state, cfg, tok.pad_token_id)
    update = algo.client_update(ctx, g, round_=1)
    assert [p.phase for p in update.phases] == ["personal", "global"]
    assert update.phases[0].metrics["reg"] >= 0 and "task_loss" in update.phases[1].metrics
    assert any(not torch.equal(p0[k], ctx.state[PERSONAL][k]) for k in p0), "personal adapter did not move"
    assert any(not torch.equal(g[k], update.state[k]) for k in g), "global adapter did not move"
    assert update.num_examples == len(train)


def test_personal_step_waits_for_its_round(tiny):
    cfg = tiny_config(fed={"personal_start_round": 2})
    am, tok, train, g = _setup(tiny, cfg)
    algo = FedOA(cfg)
    ctx = ClientContext("a", am, train, algo.init_client(am, "a"), cfg, tok.pad_token_id)
    assert [p.phase for p in algo.client_update(ctx, g, round_=1).phases] == ["global"]
    assert [p.phase for p in algo.client_update(ctx, g, round_=2).phases] == ["personal", "global"]


def test_client_update_is_reproducible(tiny):
    cfg = tiny_config(lora={"dropout": 0.1})
    am, tok, train, g = _setup(tiny, cfg)
    algo = FedOA(cfg)
    outs = []
    for _ in range(2):
        ctx = ClientContext("a", am, train, algo.init_client(am, "a"), cfg, tok.pad_token_id)
        outs.append((algo.client_update(ctx, g, 1).state, ctx.state[PERSONAL]))
    for k in g:
        assert torch.equal(outs[0][0][k], outs[1][0][k])
        assert torch.equal(outs[0][1][k], outs[1][1][k])


def test_distance_options_are_used(tiny):
    # cosine of identical features is 0 -> the regularizer vanishes at the start
    cfg = tiny_config()
    am, tok, train, g = _setup(tiny, cfg)
    am.set(GLOBAL, g)
    am.set(PERSONAL, g)
    target = example_features(am, GLOBAL, train, "mean", 4, tok.pad_token_id)
    batch = collate(train[:4], [0, 1, 2, 3], tok.pad_token_id)
    am.use(PERSONAL)
    _, parts = feature_regularized(target, 1.0, "cosine", "mean")(am, batch)
    assert abs(parts["reg"]) < 1e-5
    assert distance("mse", target, target).item() == 0


def test_personal_init_global_starts_from_the_received_adapter(tiny):
    cfg = tiny_config(fed={"personal_init": "global"}, train={"max_steps": 1})
    am, tok, train, g = _setup(tiny, cfg)
    algo = FedOA(cfg)
    state = algo.init_client(am, "a")
    assert algo.starting_personal(state, g) is not state[PERSONAL]
    assert all(torch.equal(algo.starting_personal(state, g)[k], g[k]) for k in g)
    ctx = ClientContext("a", am, train, state, cfg, tok.pad_token_id)
    algo.client_update(ctx, g, round_=1)
    # one step from G: close to G, far from the fresh init
    moved = ctx.state[PERSONAL]
    assert sum((moved[k] - g[k]).norm() for k in g) < sum((moved[k] - am.fresh_state(0)[k]).norm() for k in g)
    # once trained, the client's own adapter continues
    assert algo.starting_personal(ctx.state, g) is ctx.state[PERSONAL]


def test_answer_feature_reads_the_last_prompt_position(tiny):
    am, tok = tiny
    enc = PromptEncoder(tok, "plain", 64)
    clients = synthetic_clients(("a",), n_train=3)
    ex = [enc.encode_train(r) for r in clients[0].train]
    batch = collate(ex, [0, 1, 2], tok.pad_token_id)
    hidden = torch.randn(batch.input_ids.shape[0], batch.input_ids.shape[1], 5)
    got = features(hidden, batch, "answer")
    for i, e in enumerate(ex):
        assert torch.equal(got[i], hidden[i, len(e.prompt) - 1])  # predicts the first answer token
        assert batch.targets[batch.loss_rows == i][0] == e.response[0]
    last = features(hidden, batch, "last_token")
    assert all(torch.equal(last[i], hidden[i, len(e) - 1]) for i, e in enumerate(ex))


def test_example_features_come_back_in_example_order_whatever_the_batching(tiny):
    am, tok, train, g = _setup(tiny, tiny_config())
    am.set(GLOBAL, g)
    assert len({len(e) for e in train}) > 1  # lengths differ: the batches are sorted, the output is not
    batched = example_features(am, GLOBAL, train, "answer", 3, tok.pad_token_id)
    with torch.no_grad():
        one_by_one = [features(am.hidden(b.input_ids, b.attention_mask), b, "answer")
                      for b in (collate([e], [i], tok.pad_token_id) for i, e in enumerate(train))]
    assert torch.allclose(batched, torch.cat(one_by_one), atol=1e-5)


def test_global_step_targets_need_no_extra_pass_and_leave_the_global_adapter_as_it_was(tiny):
    """target_features = "global_step": G is trained first (the same G, bit for bit), and its forward
    passes leave h_G: with no dropout and one step, exactly the received G's features."""
    cfg = tiny_config(train={"max_steps": 1, "batch_size": 8, "micro_batch_size": 8}, lora={"dropout": 0.0})
    am, tok, train, g = _setup(tiny, cfg)
    separate = FedOA(cfg)
    ctx = ClientContext("a", am, train, separate.init_client(am, "a"), cfg, tok.pad_token_id)
    reference = separate.client_update(ctx, g, round_=1)

    from fedoa.algorithms.fedoa import capturing

    am.set(GLOBAL, g)
    expected = example_features(am, GLOBAL, train, "last_token", 8, tok.pad_token_id)
    store = torch.zeros_like(expected)
    am.use(GLOBAL)
    capturing(store, "last_token")(am, collate(train, list(range(len(train))), tok.pad_token_id))
    torch.testing.assert_close(store, expected, rtol=1e-4, atol=1e-5)

    cfg2 = tiny_config(train={"max_steps": 1, "batch_size": 8, "micro_batch_size": 8}, lora={"dropout": 0.0},
                       fedoa={"target_features": "global_step"})
    fused = FedOA(cfg2)
    ctx2 = ClientContext("a", am, train, fused.init_client(am, "a"), cfg2, tok.pad_token_id)
    update = fused.client_update(ctx2, g, round_=1)
    assert [p.phase for p in update.phases] == ["personal", "global"]
    assert all(torch.equal(update.state[k], reference.state[k]) for k in g)  # G is the same either way
    assert update.phases[0].metrics["reg"] == pytest.approx(reference.phases[0].metrics["reg"], rel=1e-4)
    for k in g:  # ... and so is P: its targets are the same features
        torch.testing.assert_close(ctx2.state[PERSONAL][k], ctx.state[PERSONAL][k], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- the regularizer's trace


def test_reg_at_the_first_and_last_step_average_to_the_logged_reg(tiny):
    cfg = tiny_config(train={"micro_batch_size": 2, "batch_size": 4})  # 8 examples: 2 steps of 2 micro-batches
    am, tok, train, g = _setup(tiny, cfg)
    algo = FedOA(cfg)
    ctx = ClientContext("a", am, train, algo.init_client(am, "a"), cfg, tok.pad_token_id)
    m = algo.client_update(ctx, g, 1).phases[0].metrics
    assert {"task_loss", "reg", "reg_first", "reg_last"} <= set(m) and "reg_before" not in m
    assert m["reg_first"] != m["reg_last"]
    assert (m["reg_first"] + m["reg_last"]) / 2 == approx(m["reg"])
    one = tiny_config(train={"micro_batch_size": 2, "batch_size": 4, "max_steps": 1})
    ctx = ClientContext("a", am, train, algo.init_client(am, "a"), one, tok.pad_token_id)
    m = FedOA(one).client_update(ctx, g, 1).phases[0].metrics
    assert m["reg_first"] == m["reg_last"] == approx(m["reg"])


def test_trace_reg_measures_the_ablation_without_changing_its_training(tiny):
    from fedoa.algorithms.fedoa import mean_distance

    runs = {}
    for trace in (False, True):
        cfg = tiny_config(fedoa={"regular_weight": 0.0, "trace_reg": trace})
        am, tok, train, g = _setup(tiny, cfg)
        g = {k: v + 0.02 * torch.randn(v.shape, generator=torch.Generator().manual_seed(7)) for k, v in
             am.fresh_state(1).items()}
        algo = FedOA(cfg)
        start = {k: v + 0.02 * torch.randn(v.shape, generator=torch.Generator().manual_seed(8))
                 for k, v in am.fresh_state(2).items()}
        ctx = ClientContext("a", am, train, {PERSONAL: dict(start)}, cfg, tok.pad_token_id)
        runs[trace] = (algo.client_update(ctx, g, 1).phases[0].metrics, ctx.state[PERSONAL])
    (plain, p_plain), (traced, p_traced) = runs[False], runs[True]
    assert all(torch.equal(p_plain[k], p_traced[k]) for k in p_plain)  # weight 0: the same P, bit for bit
    assert "reg" not in plain and {"reg", "reg_first", "reg_last", "reg_before", "reg_after"} <= set(traced)
    # before/after by hand: the same distance from the start and from the trained P to G's features
    am.set(GLOBAL, g)
    target = example_features(am, GLOBAL, train, "last_token", cfg.train.micro_batch_size, tok.pad_token_id)
    for state, key in ((start, "reg_before"), (p_traced, "reg_after")):
        am.set(PERSONAL, state)
        h = example_features(am, PERSONAL, train, "last_token", 8, tok.pad_token_id)
        size = cfg.train.micro_batch_size
        by_hand = [distance("frobenius", h[s:s + size], target[s:s + size]).item() for s in range(0, 8, size)]
        assert traced[key] == approx(sum(by_hand) / len(by_hand))
        assert mean_distance(ctx, target, "frobenius", "last_token") == approx(traced[key])
    assert traced["reg_before"] != traced["reg_after"]


def test_metrics_lines_carry_the_trace_beside_the_existing_keys(tmp_path):
    import json

    from tests.support.runs import make_tiny_run

    run = make_tiny_run(tmp_path / "fedoa", fedoa={"trace_reg": True, "mixed_eval": False})
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    personal = [x for x in lines if x["phase"] == "personal"]
    assert len(personal) == 6  # 3 clients x 2 rounds
    for x in personal:
        assert {"round", "client", "task_loss", "reg", "steps", "examples", "seconds"} <= set(x)
        assert {"reg_first", "reg_last", "reg_before", "reg_after"} <= set(x)
    assert all("reg" not in x and "reg_first" not in x for x in lines if x["phase"] == "global")
