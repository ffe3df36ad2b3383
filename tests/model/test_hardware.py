"""Hardware settings on the tiny model: bfloat16 base, bitsandbytes 4-bit/8-bit base, gradient
checkpointing. In every mode the LoRA weights, their averages and the saved adapters are float32
and stock PEFT loads what fedoa saves."""
import importlib.util
import sys

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from fedoa.algorithms.aggregation import fedavg
from fedoa.cli import main
from fedoa.config import LoraConfig, ModelConfig
from fedoa.data.batching import collate
from fedoa.data.prompts import PromptEncoder
from fedoa.errors import ModelError
from fedoa.model.adapters import GLOBAL, AdapterModel, load_adapter_state
from fedoa.model.base import load_base
from fedoa.runtime.inprocess import run_simulation
from fedoa.training.loop import train_slot
from fedoa.training.losses import task_objective
from tests.support import synthetic_clients, tiny_config, vader_tiny_config
from fedoa.testing import tiny_model_dir

needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                               reason="bitsandbytes (the 'quant' extra) is not installed")


def _model(lora=None, **model):
    base, tok = load_base(ModelConfig(name=str(tiny_model_dir()), **model))
    return AdapterModel(base, lora or LoraConfig(r=4, alpha=8, dropout=0.0)), tok


def _examples(tok, n=8):
    enc = PromptEncoder(tok, "plain", 64)
    return [enc.encode_train(r) for r in synthetic_clients(n_train=n)[0].train]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_bfloat16_base_scores_with_a_float32_head():
    """A bf16 head would round the logits (to steps of 0.125 near 20) and let close options tie."""
    am, tok = _model(dtype="bfloat16")
    hidden = torch.randn(3, am.lm_head.weight.shape[1]).to(torch.bfloat16) * 4
    logits = am.logits(hidden)
    exact = hidden.double() @ am.lm_head.weight.double().T
    assert logits.dtype == torch.float32
    assert (logits.double() - exact).abs().max() < 1e-4
    rounded = am.lm_head(hidden).double()  # what the bf16 head alone gives
    assert (rounded - exact).abs().max() > 10 * (logits.double() - exact).abs().max()


def test_bfloat16_base_trains_float32_lora_and_stock_peft_reloads_it(tmp_path):
    am, tok = _model(dtype="bfloat16")
    assert am.base.get_input_embeddings().weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for slot in am.params.values() for p in slot.values())
    start = am.fresh_state(0)
    am.set(GLOBAL, start)
    cfg = tiny_config().train
    result = train_slot(am, GLOBAL, _examples(tok), cfg, task_objective, "bf16", tok.pad_token_id)
    trained = am.get(GLOBAL)
    assert result.steps == 2 and all(v.dtype == torch.float32 for v in trained.values())
    assert any(v.abs().sum() > 0 for k, v in trained.items() if ".lora_B." in k)  # it learned

    averaged = fedavg([start, trained], [1.0, 1.0])
    assert all(v.dtype == torch.float32 for v in averaged.values())
    am.save(averaged, tmp_path / "g")
    assert all(v.dtype == torch.float32 for v in load_file(str(tmp_path / "g" / "adapter_model.safetensors")).values())

    fresh, _ = load_base(ModelConfig(name=str(tiny_model_dir()), dtype="bfloat16"))
    stock = PeftModel.from_pretrained(fresh, tmp_path / "g")
    loaded = {n: p for n, p in stock.named_parameters() if ".lora_" in n}
    assert loaded and all(p.dtype == torch.float32 for p in loaded.values())
    ids = torch.tensor([tok("The movie was great and")["input_ids"]])
    am.set(GLOBAL, averaged)
    am.use(GLOBAL)
    ours = _logits(am.peft, ids)
    assert torch.allclose(ours, _logits(stock, ids), atol=1e-2)
    with stock.disable_adapter():
        assert not torch.allclose(_logits(stock, ids), ours, atol=1e-3)  # the adapter is in use


def _bnb_config(mode):
    if mode == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.float32)
    return BitsAndBytesConfig(load_in_8bit=True)


@needs_bnb
@pytest.mark.parametrize("mode", ["4bit", "8bit"])
def test_quantized_base_runs_a_federation_and_its_adapters_load_in_stock_peft(tmp_path, mode):
    """On CPU with bitsandbytes >= 0.49 both modes run: train, FedAvg, export, reload."""
    cfg = vader_tiny_config(model={"quantization": mode}, fed={"rounds": 1})
    cfg.eval.ood = False
    run_simulation(cfg, tmp_path / "run", progress=False, reports=False)
    folder = tmp_path / "run" / "adapters" / "global"
    saved = load_adapter_state(folder)
    assert all(v.dtype == torch.float32 for v in saved.values())
    assert any(v.abs().sum() > 0 for k, v in saved.items() if ".lora_B." in k)

    import bitsandbytes as bnb

    am, tok = _model(quantization=mode)
    assert any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in am.base.modules())
    ids = torch.tensor([tok("The movie was great and")["input_ids"]])
    am.set(GLOBAL, saved)
    am.use(GLOBAL)
    ours = _logits(am.peft, ids)
    # stock transformers + PEFT on the same quantized base
    q_base = AutoModelForCausalLM.from_pretrained(tiny_model_dir(), quantization_config=_bnb_config(mode),
                                                  dtype=torch.float32, device_map="cpu")
    stock = PeftModel.from_pretrained(q_base, folder)
    gap = (ours - _logits(stock, ids)).abs().max()  # bitsandbytes' inference kernel vs ours: rounding
    with stock.disable_adapter():
        effect = (ours - _logits(stock, ids)).abs().max()
    assert gap < 1e-2 and effect > 10 * gap
    # ... and de-quantized: the full-precision base takes the same float32 LoRA weights
    full = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir()), folder)
    lora = {n.replace(".default", ""): p for n, p in full.named_parameters() if ".lora_" in n}
    assert {k.removeprefix("base_model.model.") for k in lora} == {k.removeprefix("base_model.model.") for k in saved}
    assert all(torch.equal(p, saved[k]) for k, p in lora.items())


def test_missing_bitsandbytes_is_a_one_line_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what `import` meets when it is not installed
    with pytest.raises(ModelError, match="bitsandbytes") as e:
        load_base(ModelConfig(name=str(tiny_model_dir()), quantization="8bit"))
    assert e.value.where == "model.quantization"
    code = main(["run", "--out", str(tmp_path / "out"), "--quiet", "--set", f"model.name={str(tiny_model_dir())!r}",
                 "--set", "model.quantization='4bit'", "--set", "data.train_per_client=4"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "model.quantization" in err and "fedoa[quant]" in err
    assert not (tmp_path / "out").exists()


def test_gradient_checkpointing_recomputes_layers_with_the_same_loss_and_gradients():
    lora = LoraConfig(r=4, alpha=8, dropout=0.1)  # dropout: the recomputation must redraw the same masks
    results = {}
    for gc in (False, True):
        am, tok = _model(lora=lora, gradient_checkpointing=gc)
        calls = []
        # a pre-hook: checkpointing stops recomputing once the saved tensors are back, inside the MLP
        am.decoder.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.append(1))
        am.set(GLOBAL, am.fresh_state(0))
        am.use(GLOBAL)
        params = am.trainable(GLOBAL)
        batch = collate(_examples(tok, 4), list(range(4)), tok.pad_token_id)
        am.peft.train()
        torch.manual_seed(3)
        loss, _ = task_objective(am, batch)
        loss.backward()
        am.peft.eval()
        results[gc] = (loss.item(), [p.grad.clone() for p in params], len(calls))
    (loss0, grads0, calls0), (loss1, grads1, calls1) = results[False], results[True]
    assert (calls0, calls1) == (1, 2)  # checkpointed: layer 0 ran again in backward
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(grads0, grads1))
    assert any(g.abs().sum() > 0 for g in grads0)
