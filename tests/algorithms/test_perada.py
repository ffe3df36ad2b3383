"""PerAda: the proximal pull of the personal adapter, the server's distillation and its pool."""
import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedoa.algorithms.aggregation import fedavg
from fedoa.algorithms.base import ClientContext, ClientUpdate, ServerContext
from fedoa.algorithms.fedprox import squared_distance
from fedoa.algorithms.perada import PerAda, kl_to_teacher, pool_logits
from fedoa.config import build
from fedoa.data.batching import collate
from fedoa.data.pool import unlabeled_pool
from fedoa.data.prompts import PromptEncoder
from fedoa.data.scenario import build_scenario
from fedoa.errors import ConfigError, DataError
from fedoa.finished import FinishedRun
from fedoa.model.adapters import GLOBAL, PERSONAL
from fedoa.training.losses import response_loss
from tests.support import synthetic_clients, tiny_config
from tests.support.runs import make_tiny_run
from fedoa.testing import tiny_model_dir


def _noisy(am, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in am.fresh_state(seed).items()}


def _train(tok):
    client = synthetic_clients(("a",), n_train=8)[0]
    return [PromptEncoder(tok, "plain", 64).encode_train(r) for r in client.train]


def _dist(a, b):
    return sum((a[k].double() - b[k].double()).pow(2).sum() for k in a).sqrt().item()


def test_personal_objective_is_task_loss_plus_lam_times_the_squared_distance(tiny):
    am, tok = tiny
    train = _train(tok)
    g, p = _noisy(am, 1, 0.05), _noisy(am, 2, 0.05)
    algo = PerAda(tiny_config(perada={"lam": 0.7, "pool": "none"}))
    ctx = ClientContext("a", am, train, {PERSONAL: p}, algo.cfg, tok.pad_token_id)
    am.set(PERSONAL, p)
    am.use(PERSONAL)
    batch = collate(train[:2], [0, 1], tok.pad_token_id)
    loss, parts = algo.personal_objective(ctx, g)(am, batch)
    task, _ = response_loss(am, batch)
    expected = 0.7 * squared_distance(am.params[PERSONAL], g)
    assert loss.item() == pytest.approx(task.item() + expected.item(), rel=1e-5)
    assert parts["prox"] == pytest.approx(expected.item() / 0.7, rel=1e-5)


def test_proximal_pull_keeps_the_personal_adapter_near_the_received_global(tiny):
    am, tok = tiny
    train = _train(tok)
    g = _noisy(am, 1, 0.05)
    moved = {}
    for lam in (0.0, 50.0):
        algo = PerAda(tiny_config(perada={"lam": lam, "pool": "none"}, train={"lr": 5e-2, "epochs": 4}))
        ctx = ClientContext("a", am, train, algo.init_client(am, "a"), algo.cfg, tok.pad_token_id)
        up = algo.client_update(ctx, g, 1)
        assert [ph.phase for ph in up.phases] == ["personal", "global"]
        moved[lam] = _dist(ctx.state[PERSONAL], g)  # P started as a copy of g (the paper's v = w)
    assert 0 < moved[50.0] < 0.5 * moved[0.0], moved


def _server(tiny, tmp_path, **perada):
    am, tok = tiny
    prompts = [r.instruction for c in synthetic_clients(("p", "q"), n_train=12, seed=5) for r in c.train]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in prompts))
    cfg = tiny_config(perada={"pool": "file", "pool_path": str(pool), **perada})
    algo = PerAda(cfg)
    algo.attach_server(ServerContext(am, PromptEncoder(tok, "plain", 64), cfg))
    return am, tok, algo


def test_distillation_moves_the_global_adapter_toward_the_clients_ensemble(tiny, tmp_path):
    am, tok, algo = _server(tiny, tmp_path, kd_steps=16, kd_lr=1e-2, kd_batch_size=8)
    assert len(algo.pool) == 24 and all(e.response == () for e in algo.pool)
    g = am.fresh_state(0)
    teachers = {c: _noisy(am, s, 0.4) for c, s in (("b", 3), ("a", 4), ("c", 5))}
    updates = [ClientUpdate(c, st, 8) for c, st in teachers.items()]
    new = algo.aggregate(updates, g, 1)
    averaged = fedavg([teachers[c] for c in sorted(teachers)], [1.0, 1.0, 1.0])
    [line] = algo.server_metrics(1)
    assert line["phase"] == "distill" and line["teachers"] == 3 and line["steps"] == 16
    assert line["kept"] == "distilled" and line["kd_kl_after"] < 0.8 * line["kd_kl_before"], line
    assert algo.server_metrics(1) == []  # each round's line is given once

    # measured again from scratch: the ensemble's mean logits against the averaged and the returned adapter
    micro = algo.cfg.train.micro_batch_size
    ensemble = 0
    for state in teachers.values():
        am.set(PERSONAL, state)
        ensemble = ensemble + pool_logits(am, PERSONAL, algo.pool, micro, tok.pad_token_id) / 3
    kl = {}
    for name, state in (("averaged", averaged), ("distilled", new)):
        am.set(GLOBAL, state)
        kl[name] = kl_to_teacher(pool_logits(am, GLOBAL, algo.pool, micro, tok.pad_token_id), ensemble, 1.0).item()
    assert kl["averaged"] == pytest.approx(line["kd_kl_before"], rel=1e-4)
    assert kl["distilled"] == pytest.approx(line["kd_kl_after"], rel=1e-4)


def test_distillation_that_does_not_help_keeps_the_averaged_adapter(tiny, tmp_path):
    am, _, algo = _server(tiny, tmp_path, kd_steps=2, kd_lr=5.0)  # a rate that can only overshoot
    teachers = [ClientUpdate(c, _noisy(am, s, 0.02), 8) for c, s in (("a", 3), ("b", 4))]
    new = algo.aggregate(teachers, am.fresh_state(0), 1)
    [line] = algo.server_metrics(1)
    assert line["kept"] == "averaged" and line["kd_kl_after"] >= line["kd_kl_before"]
    averaged = fedavg([u.state for u in teachers], [1.0, 1.0])
    assert all(torch.equal(new[k], averaged[k]) for k in new)


def test_no_pool_no_distillation_and_the_settings_that_cannot_work_are_refused(tiny, tmp_path):
    am, tok = tiny
    algo = PerAda(tiny_config(perada={"pool": "none"}))
    assert not algo.needs_server_model()
    ups = [ClientUpdate("a", _noisy(am, 3, 0.1), 8), ClientUpdate("b", _noisy(am, 4, 0.1), 8)]
    algo.attach_server(ServerContext(am, PromptEncoder(tok, "plain", 64), algo.cfg))
    new = algo.aggregate(ups, am.fresh_state(0), 1)
    assert all(torch.equal(new[k], fedavg([u.state for u in ups], [1, 1])[k]) for k in new)
    assert algo.server_metrics(1) == []
    assert PerAda(tiny_config()).needs_server_model()  # the default pool distils: Flower refuses it
    with pytest.raises(ConfigError, match="DP-FedAvg"):
        PerAda(build({**tiny_config().to_dict(), "method": "perada", "dp": {"noise_multiplier": 1.0}}))
    with pytest.raises(ConfigError, match="pool_path"):
        unlabeled_pool(tiny_config(), "file", "", 0)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"output": "x"}\n')
    with pytest.raises(DataError, match="instruction"):
        unlabeled_pool(tiny_config(), "file", str(empty), 0)


def _jsonl_tasks(root, tasks):
    for cat, task, n in tasks:
        (root / cat).mkdir(parents=True, exist_ok=True)
        for split, size in (("train", n), ("test", 3)):
            lines = [json.dumps({"instruction": f"{task} {split} question {i}?", "output": "yes"}) for i in range(size)]
            (root / cat / f"{task}_{split}.jsonl").write_text("\n".join(lines) + "\n")


def test_unused_train_pool_holds_no_client_record_no_test_prompt_and_no_held_out_category(tmp_path):
    root = tmp_path / "flan"
    _jsonl_tasks(root, [("nli", "snli", 10), ("nli", "anli", 10), ("sent", "sst2", 10), ("sent", "imdb", 10)])
    # a test prompt repeated in a training file must stay out of the pool
    with (root / "nli" / "snli_train.jsonl").open("a") as f:
        f.write(json.dumps({"instruction": "anli test question 0?", "output": "yes"}) + "\n")
    cfg = tiny_config(data={"source": "jsonl", "path": str(root), "train_per_client": 4})
    pool = unlabeled_pool(cfg, "unused_train", "", 0)
    held = {r.instruction for c in build_scenario(cfg).clients for r in c.train}
    dup_held = "anli test question 0?" in held  # then the snli client holds 4 others, 7 are left over
    assert len(pool) == 4 * 6 + dup_held and "anli test question 0?" not in pool
    assert not held & set(pool) and all(" train " in p for p in pool)
    assert len(unlabeled_pool(cfg, "unused_train", "", 5)) == 5
    assert unlabeled_pool(cfg, "unused_train", "", 5) == unlabeled_pool(cfg, "unused_train", "", 5)

    lco = tiny_config(data={"source": "jsonl", "path": str(root), "train_per_client": 4},
                      protocol={"name": "leave-category-out", "holdout": "sent"})
    pool = unlabeled_pool(lco, "unused_train", "", 0)
    assert len(pool) == 2 * 6 + dup_held and all(p.startswith(("snli", "anli")) for p in pool)
    with pytest.raises(DataError, match="empty"):
        unlabeled_pool(tiny_config(data={"source": "jsonl", "path": str(root)}), "unused_train", "", 0)


def test_two_round_run_distils_every_round_and_exports_stock_peft_adapters(tmp_path):
    run = make_tiny_run(tmp_path / "perada", "perada", train={"lr": 0.1}, perada={"kd_steps": 4})
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    distill = [x for x in lines if x["phase"] == "distill"]
    assert [(x["round"], x["client"], x["teachers"]) for x in distill] == [(1, "server", 3), (2, "server", 3)]
    assert all(x["kd_kl_before"] >= 0 and x["kept"] in ("distilled", "averaged") for x in distill)

    tok = AutoTokenizer.from_pretrained(tiny_model_dir())
    ids = torch.tensor([tok("Is this movie text positive or negative?\nsuperb warm fun\nAnswer:\n")["input_ids"]])
    finished = FinishedRun.open(run)
    for kind, folder in (("personal", run / "adapters" / "personal" / "movie"), ("global", run / "adapters" / "global")):
        finished.activate(kind, "movie")
        am = finished.model[0]
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir(), dtype=torch.float32)
        with torch.no_grad():
            ours = am.logits(am.hidden(ids, torch.ones_like(ids)))
            stock = PeftModel.from_pretrained(base, folder)(input_ids=ids).logits
        assert torch.allclose(stock, ours, atol=1e-5), kind
