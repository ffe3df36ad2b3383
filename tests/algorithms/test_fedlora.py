"""FedLoRA: the private part and the shared adapter train in alternation; only the adapter travels."""
import json

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedoa.algorithms.base import ClientContext
from fedoa.algorithms.fedlora import FedLoRA, under_sum
from fedoa.algorithms.local import Local
from fedoa.data.prompts import PromptEncoder
from fedoa.finished import FinishedRun
from fedoa.model.adapters import GLOBAL, PERSONAL
from fedoa.training.losses import task_objective
from tests.support import synthetic_clients, tiny_config
from tests.support.runs import make_tiny_run
from fedoa.testing import tiny_model_dir


def _setup(tiny, train_settings=None):
    am, tok = tiny
    client = synthetic_clients(("a",), n_train=8)[0]
    train = [PromptEncoder(tok, "plain", 64).encode_train(r) for r in client.train]
    gen = torch.Generator().manual_seed(1)
    g = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in am.fresh_state(1).items()}
    algo = FedLoRA(tiny_config(train={"lr": 5e-2, **(train_settings or {})}))
    return am, tok, train, g, algo


def _ctx(algo, am, tok, train):
    return ClientContext("a", am, train, algo.init_client(am, "a"), algo.cfg, tok.pad_token_id)


def _equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_uploads_only_the_trained_shared_adapter_and_keeps_the_private_part(tiny):
    am, tok, train, g, algo = _setup(tiny)
    ctx = _ctx(algo, am, tok, train)
    p0 = {k: v.clone() for k, v in ctx.state[PERSONAL].items()}
    up = algo.client_update(ctx, g, 1)
    assert [ph.phase for ph in up.phases] == ["personal", "global"]
    assert set(up.state) == set(am.keys(GLOBAL)) and _equal(up.state, am.get(GLOBAL))  # the trained adapter
    assert not _equal(up.state, g)
    p = ctx.state[PERSONAL]
    assert set(ctx.state) == {PERSONAL} and not _equal(p, p0)  # the private part trained, stays in the state
    assert all(not torch.equal(up.state[k], p[k]) for k in p)  # what travels is not the private part
    shared = {t.data_ptr() for t in up.state.values()}
    assert not shared & {t.data_ptr() for t in p.values()}


def test_private_part_trains_with_the_received_adapter_frozen_then_the_adapter_with_it_frozen(tiny):
    am, tok, train, g, algo = _setup(tiny)
    # step (1) alone: the global slot holds the received adapter before and after
    ctx = _ctx(algo, am, tok, train)
    am.set(GLOBAL, g)
    algo.personal_step(ctx, g, 1, under_sum(task_objective, PERSONAL))
    assert _equal(am.get(GLOBAL), g)
    p_alone = ctx.state[PERSONAL]
    # the whole update: its private part is exactly step (1)'s (same seeds), the adapter step left it alone
    ctx2 = _ctx(algo, am, tok, train)
    up = algo.client_update(ctx2, g, 1)
    assert _equal(ctx2.state[PERSONAL], p_alone) and _equal(am.get(PERSONAL), p_alone)
    assert not _equal(up.state, g)


def test_both_slots_are_summed_in_training_and_in_the_personal_model(tiny):
    am, tok, train, g, algo = _setup(tiny, {"max_steps": 2})
    ctx = _ctx(algo, am, tok, train)
    algo.client_update(ctx, g, 1)
    local = Local(algo.cfg)  # the same private step without G in the forward pass
    lctx = _ctx(local, am, tok, train)
    local.client_update(lctx, g, 1)
    assert not _equal(ctx.state[PERSONAL], lctx.state[PERSONAL])

    ids = torch.tensor([train[0].prompt])
    mask = torch.ones_like(ids)
    algo.setup_eval(ctx, "personal", g)
    assert set(am.peft.base_model.active_adapters) == {GLOBAL, PERSONAL}
    with torch.no_grad():
        both = am.hidden(ids, mask)
        am.use(PERSONAL)
        p_only = am.hidden(ids, mask)
    assert not torch.allclose(both, p_only, atol=1e-5)


def test_two_round_run_exports_adapters_that_stock_peft_combines_into_the_personal_model(tmp_path):
    run = make_tiny_run(tmp_path / "fedlora", "fedlora", train={"lr": 0.1})
    results = json.loads((run / "results.json").read_text())
    comm = results["communication"]
    assert comm["bytes_up_per_round"] == 3 * comm["adapter_bytes"]  # one adapter per client and round
    assert set(results["summary"]) == {"personal", "global", "zero_shot"}

    tok = AutoTokenizer.from_pretrained(tiny_model_dir())
    ids = torch.tensor([tok("Is this movie text positive or negative?\nsuperb warm fun\nAnswer:\n")["input_ids"]])
    finished = FinishedRun.open(run)
    finished.activate("personal", "movie")
    am = finished.model[0]
    with torch.no_grad():
        ours = am.logits(am.hidden(ids, torch.ones_like(ids)))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir(), dtype=torch.float32)
    stock = PeftModel.from_pretrained(base, run / "adapters" / "personal" / "movie", adapter_name="private")
    stock.load_adapter(run / "adapters" / "global", adapter_name="shared")
    stock.base_model.set_adapter(["private", "shared"])
    with torch.no_grad():
        combined = stock(input_ids=ids).logits
        stock.base_model.set_adapter("private")
        private_only = stock(input_ids=ids).logits
    assert torch.allclose(combined, ours, atol=1e-5)
    assert not torch.allclose(private_only, ours, atol=1e-4)
