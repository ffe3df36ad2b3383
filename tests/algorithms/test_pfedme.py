import pytest
import torch

from fedoa.algorithms.base import ClientContext, ClientUpdate
from fedoa.algorithms.pfedme import PFedMe, moreau_pull, server_mix
from fedoa.data.prompts import PromptEncoder
from fedoa.model.adapters import PERSONAL
from tests.support import synthetic_clients, tiny_config


def test_moreau_pull_on_a_toy():
    w = {"x": torch.tensor([1.0, -2.0, 4.0])}
    theta = {"x": torch.tensor([3.0, -2.0, 0.0])}
    moreau_pull(w, theta, 0.25)  # w - 0.25 * (w - theta)
    assert w["x"].tolist() == [1.5, -2.0, 3.0]
    assert theta["x"].tolist() == [3.0, -2.0, 0.0]
    moreau_pull(w, theta, 1.0)  # eta * lambda = 1: w jumps to theta
    assert w["x"].tolist() == theta["x"].tolist()


def test_server_mix_with_beta():
    prev = {"x": torch.tensor([1.0, 2.0])}
    avg = {"x": torch.tensor([3.0, 0.0])}
    assert server_mix(prev, avg, 1.0)["x"].tolist() == [3.0, 0.0]
    assert server_mix(prev, avg, 0.5)["x"].tolist() == [2.0, 1.0]
    assert server_mix(prev, avg, 2.0)["x"].tolist() == [5.0, -2.0]  # beta > 1 extrapolates


def test_aggregate_uses_beta():
    cfg = tiny_config(pfedme={"beta": 2.0})
    prev = {"x": torch.tensor([1.0])}
    ups = [ClientUpdate("a", {"x": torch.tensor([2.0])}, 1), ClientUpdate("b", {"x": torch.tensor([4.0])}, 1)]
    assert PFedMe(cfg).aggregate(ups, prev, 1)["x"].item() == pytest.approx(-1.0 + 2.0 * 3.0)
    assert PFedMe(tiny_config()).aggregate(ups, prev, 1)["x"].item() == 3.0


def test_client_update_follows_the_pfedme_rule(tiny):
    """One local batch: theta takes K steps from w0, then w1 = w0 - eta*lam*(w0 - theta)."""
    am, tok = tiny
    client = synthetic_clients(("a",), n_train=8)[0]
    train = [PromptEncoder(tok, "plain", 64).encode_train(r) for r in client.train]
    gen = torch.Generator().manual_seed(3)
    w0 = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in am.fresh_state(3).items()}
    w0_copy = {k: v.clone() for k, v in w0.items()}
    cfg = tiny_config(train={"max_steps": 1}, pfedme={"lam": 5.0, "eta": 0.1, "inner_steps": 3})
    algo = PFedMe(cfg)
    ctx = ClientContext("a", am, train, algo.init_client(am, "a"), cfg, tok.pad_token_id)
    up = algo.client_update(ctx, w0, round_=1)
    assert all(torch.equal(w0[k], w0_copy[k]) for k in w0), "the received state was modified"
    theta = ctx.state[PERSONAL]
    assert any(not torch.equal(theta[k], w0[k]) for k in w0), "theta did not move"
    for k in w0:
        torch.testing.assert_close(up.state[k], w0[k] - 0.5 * (w0[k] - theta[k]), rtol=1e-6, atol=1e-7)
    ph = up.phases[0]
    assert ph.phase == "pfedme" and ph.steps == 3 and ph.examples == 4 and ph.metrics["prox"] > 0
    assert algo.local_steps(8, 1) == 3


def test_the_moreau_term_keeps_theta_near_w(tiny):
    am, tok = tiny
    client = synthetic_clients(("a",), n_train=8)[0]
    train = [PromptEncoder(tok, "plain", 64).encode_train(r) for r in client.train]
    w0 = am.fresh_state(4)
    dist = {}
    for lam in (0.01, 50.0):
        cfg = tiny_config(train={"max_steps": 1}, pfedme={"lam": lam, "eta": 0.01, "inner_steps": 4})
        algo = PFedMe(cfg)
        ctx = ClientContext("a", am, train, algo.init_client(am, "a"), cfg, tok.pad_token_id)
        algo.client_update(ctx, w0, round_=1)
        dist[lam] = sum((ctx.state[PERSONAL][k] - w0[k]).pow(2).sum() for k in w0).sqrt().item()
    assert dist[50.0] < dist[0.01]
