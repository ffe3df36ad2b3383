"""local, fedit, fedprox, ditto, centralized: the parameter-space baselines."""
import pytest
import torch

from fedoa.algorithms.base import ClientContext
from fedoa.algorithms.centralized import POOL, Centralized
from fedoa.algorithms.ditto import Ditto
from fedoa.algorithms.fedit import FedIT
from fedoa.algorithms.fedoa import FedOA
from fedoa.algorithms.fedprox import FedProx, device_copy, with_proximal
from fedoa.algorithms.local import Local
from fedoa.data.batching import collate
from fedoa.data.prompts import PromptEncoder
from fedoa.model.adapters import GLOBAL, PERSONAL
from fedoa.training.losses import task_objective
from tests.support import synthetic_clients, tiny_config


def _setup(tiny):
    am, tok = tiny
    client = synthetic_clients(("a",), n_train=8)[0]
    enc = PromptEncoder(tok, "plain", 64)
    train = [enc.encode_train(r) for r in client.train]
    gen = torch.Generator().manual_seed(1)
    g = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in am.fresh_state(1).items()}
    return am, tok, train, g


def _dist(a, b):
    return sum((a[k].double() - b[k].double()).pow(2).sum() for k in a).sqrt().item()


def _ctx(algo, am, tok, train, name="a", state=None):
    state = algo.init_client(am, name) if state is None else state
    return ClientContext(name, am, train, state, algo.cfg, tok.pad_token_id)


def test_local_trains_p_exactly_like_fedoa_without_regularizer(tiny):
    am, tok, train, g = _setup(tiny)
    cfg = tiny_config(fedoa={"regular_weight": 0.0}, train={"max_steps": 1})  # personal_start_round = 1
    local, fedoa = Local(cfg), FedOA(cfg)
    lc, fc = _ctx(local, am, tok, train), _ctx(fedoa, am, tok, train)
    for r in (1, 2):
        up = local.client_update(lc, g, r)
        fedoa.client_update(fc, g, r)
        assert up.state is None and [ph.phase for ph in up.phases] == ["personal"]
        for k in g:
            assert torch.equal(lc.state[PERSONAL][k], fc.state[PERSONAL][k]), (r, k)
    assert any(not torch.equal(lc.state[PERSONAL][k], local.init_client(am, "a")[PERSONAL][k]) for k in g)
    assert local.evaluated == ("personal",) and not local.federated
    assert set(local.exported_adapters(lc.state, g)) == {"personal"}


def test_fedit_trains_and_uploads_the_global_adapter(tiny):
    am, tok, train, g = _setup(tiny)
    algo = FedIT(tiny_config())
    ctx = _ctx(algo, am, tok, train)
    up = algo.client_update(ctx, g, 1)
    assert ctx.state == {} and algo.evaluated == ("global",)
    assert [ph.phase for ph in up.phases] == ["global"] and up.num_examples == len(train)
    assert any(not torch.equal(g[k], up.state[k]) for k in g)


def test_fedprox_with_mu_zero_is_fedit_exactly(tiny):
    am, tok, train, g = _setup(tiny)
    fedit = FedIT(tiny_config()).client_update(_ctx(FedIT(tiny_config()), am, tok, train), g, 1).state
    cfg = tiny_config(fedprox={"mu": 0.0})
    prox = FedProx(cfg).client_update(_ctx(FedProx(cfg), am, tok, train), g, 1).state
    assert all(torch.equal(fedit[k], prox[k]) for k in g)
    strong = tiny_config(fedprox={"mu": 50.0})
    up = FedProx(strong).client_update(_ctx(FedProx(strong), am, tok, train), g, 1)
    assert "prox" in up.phases[0].metrics
    assert _dist(up.state, g) < _dist(fedit, g)


@pytest.mark.parametrize("slot", [GLOBAL, PERSONAL])
def test_proximal_term_has_the_gradient_weight_times_difference(tiny, slot):
    am, tok, train, g = _setup(tiny)
    anchor = device_copy(g, am, slot)
    start = {k: v + 0.1 for k, v in am.fresh_state(5).items()}
    batch = collate(train[:2], [0, 1], tok.pad_token_id)
    grads = []
    for weight in (0.0, 3.0):
        am.set(slot, start)
        am.use(slot)
        params = am.trainable(slot)
        loss, parts = with_proximal(task_objective, slot, anchor, weight)(am, batch)
        loss.backward()
        grads.append([p.grad.clone() for p in params])
        for p in params:
            p.grad = None
        am.freeze()
    assert parts["prox"] == pytest.approx(_dist(start, g) ** 2, rel=1e-4)
    for key, g0, g3 in zip(am.params[slot], *grads):
        torch.testing.assert_close(g3 - g0, 3.0 * (start[key] - g[key]), rtol=1e-4, atol=1e-6)


def test_ditto_pulls_the_personal_adapter_toward_the_received_global(tiny):
    am, tok, train, g = _setup(tiny)
    dist = {}
    for lam in (0.0, 20.0):
        cfg = tiny_config(ditto={"lam": lam}, train={"max_steps": 2})
        algo = Ditto(cfg)
        ctx = _ctx(algo, am, tok, train)
        up = algo.client_update(ctx, g, 1)
        assert [ph.phase for ph in up.phases] == ["personal", "global"]
        dist[lam] = _dist(ctx.state[PERSONAL], g)
        if lam:
            assert up.phases[0].metrics["prox"] > 0
            # the global step is FedIT's: the prox term never touches G
            fedit = FedIT(cfg).client_update(_ctx(FedIT(cfg), am, tok, train), g, 1).state
            assert all(torch.equal(fedit[k], up.state[k]) for k in g)
    assert dist[20.0] < dist[0.0] - 1e-3


def test_ditto_personal_step_waits_for_its_round(tiny):
    am, tok, train, g = _setup(tiny)
    cfg = tiny_config(fed={"personal_start_round": 2}, train={"max_steps": 1})
    algo = Ditto(cfg)
    ctx = _ctx(algo, am, tok, train)
    assert [ph.phase for ph in algo.client_update(ctx, g, 1).phases] == ["global"]
    assert algo.local_steps(8, 1) == 1 and algo.local_steps(8, 2) == 2


def test_centralized_pools_every_client_and_keeps_the_single_update(tiny):
    cfg = tiny_config()
    algo = Centralized(cfg)
    assert algo.training_groups(["b"], ["c", "a", "b"]) == {POOL: ["a", "b", "c"]}
    assert not algo.federated and algo.evaluated == ("global",)
    am, tok, train, g = _setup(tiny)
    up = algo.client_update(_ctx(algo, am, tok, train, name=POOL, state={}), g, 1)
    assert algo.aggregate([up], g, 1) is up.state
    with pytest.raises(RuntimeError):
        algo.aggregate([up, up], g, 1)
