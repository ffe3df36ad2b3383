import pytest
import torch

from fedoa.algorithms.base import ClientContext
from fedoa.algorithms.fedsdr import FedSDR, fedsdr_regularizer, sdr_regularized
from fedoa.data.batching import collate
from fedoa.data.prompts import PromptEncoder
from fedoa.model.adapters import GLOBAL, PERSONAL
from fedoa.training.losses import example_features, features, response_loss
from tests.support import synthetic_clients, tiny_config


def _by_hand(h_p, h_g):
    n, d = len(h_g), len(h_g[0])
    mean = [sum(h_g[j][k] for j in range(n)) / n for k in range(d)]
    total = 0.0
    for i in range(n):
        dot = sum(h_p[i][k] * abs(h_g[i][k] - mean[k]) for k in range(d))
        total += abs(dot)
    return total / n


def test_regularizer_against_a_hand_computation():
    h_g = [[1.0, 2.0, -1.0], [3.0, 0.0, 1.0], [2.0, 4.0, 0.0]]
    h_p = [[0.5, -1.0, 2.0], [-3.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    # mean_j h_G = (2, 2, 0); |h_G,i - mean| = (1,0,1), (1,2,1), (0,2,0)
    # dots: 0.5 + 2 = 2.5; -3 + 2 + 0 = -1; 2 -> |.| mean = (2.5 + 1 + 2) / 3
    got = fedsdr_regularizer(torch.tensor(h_p), torch.tensor(h_g))
    assert got.item() == pytest.approx(5.5 / 3)
    assert got.item() == pytest.approx(_by_hand(h_p, h_g))
    torch.manual_seed(0)
    a, b = torch.randn(5, 7), torch.randn(5, 7)
    assert fedsdr_regularizer(a, b).item() == pytest.approx(_by_hand(a.tolist(), b.tolist()), rel=1e-5)
    # one example: no spread around the batch mean, nothing to regularize
    assert fedsdr_regularizer(a[:1], b[:1]).item() == 0.0


def test_only_the_personal_features_get_gradients():
    h_p = torch.randn(4, 3, requires_grad=True)
    h_g = torch.randn(4, 3, requires_grad=True)
    fedsdr_regularizer(h_p, h_g).backward()
    assert h_p.grad is not None and h_p.grad.abs().sum() > 0
    assert h_g.grad is None


def test_objective_and_client_update_on_the_tiny_model(tiny):
    am, tok = tiny
    client = synthetic_clients(("a",), n_train=8)[0]
    train = [PromptEncoder(tok, "plain", 64).encode_train(r) for r in client.train]
    gen = torch.Generator().manual_seed(1)
    g = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in am.fresh_state(1).items()}
    am.set(GLOBAL, g)
    am.set(PERSONAL, {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in am.fresh_state(2).items()})
    target = example_features(am, GLOBAL, train, "last_token", 4, tok.pad_token_id)
    batch = collate(train[:4], [0, 1, 2, 3], tok.pad_token_id)
    am.use(PERSONAL)
    with torch.no_grad():
        loss, parts = sdr_regularized(target, 0.5, "last_token")(am, batch)
        ce, hidden = response_loss(am, batch)
        h_p = features(hidden, batch, "last_token")
    expected = _by_hand(h_p.tolist(), target[:4].tolist())
    assert parts["reg"] == pytest.approx(expected, rel=1e-4)
    assert loss.item() == pytest.approx(ce.item() + 0.5 * expected, rel=1e-4)

    cfg = tiny_config(train={"max_steps": 1})
    algo = FedSDR(cfg)
    ctx = ClientContext("a", am, train, algo.init_client(am, "a"), cfg, tok.pad_token_id)
    up = algo.client_update(ctx, g, 1)
    assert [ph.phase for ph in up.phases] == ["personal", "global"]
    assert up.phases[0].metrics["reg"] > 0
