import json

import pytest
import torch
from peft import PeftModel

from fedoa.config import ModelConfig
from fedoa.model.adapters import GLOBAL, PERSONAL, load_adapter_state, state_bytes
from fedoa.model.base import load_base
from fedoa.testing import tiny_model_dir


def test_get_set_round_trip_and_fresh_init(tiny):
    am, _ = tiny
    s1, s2 = am.fresh_state(7), am.fresh_state(7)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert all(v.abs().sum() == 0 for k, v in s1.items() if ".lora_B." in k)  # LoRA starts as the base
    assert any(not torch.equal(s1[k], am.fresh_state(8)[k]) for k in s1 if ".lora_A." in k)
    am.set(PERSONAL, s1)
    got = am.get(PERSONAL)
    assert got.keys() == s1.keys() and all(torch.equal(got[k], s1[k]) for k in s1)
    assert state_bytes(s1) == sum(v.numel() * 4 for v in s1.values())


def test_set_rejects_wrong_keys_and_shapes(tiny):
    am, _ = tiny
    state = am.fresh_state(0)
    with pytest.raises(ValueError, match="does not match"):
        am.set(GLOBAL, {k: v for k, v in list(state.items())[1:]})
    k = next(iter(state))
    bad = dict(state)
    bad[k] = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="shape"):
        am.set(GLOBAL, bad)


def test_saved_adapter_loads_in_stock_peft_with_same_logits(tiny, tmp_path):
    am, tok = tiny
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in am.fresh_state(5).items()}
    am.save(state, tmp_path / "personal")
    cfg = json.loads((tmp_path / "personal" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == am.lora.r
    assert set(load_adapter_state(tmp_path / "personal")) == set(state)

    ids = torch.tensor([tok("The movie was great and")["input_ids"]])
    am.set(PERSONAL, state)
    am.use(PERSONAL)
    with torch.no_grad():
        ours = am.logits(am.hidden(ids, torch.ones_like(ids)))
    fresh_base, _ = load_base(ModelConfig(name=str(tiny_model_dir())))
    stock = PeftModel.from_pretrained(fresh_base, tmp_path / "personal")
    with torch.no_grad():
        theirs = stock(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    with torch.no_grad(), stock.disable_adapter():
        assert not torch.allclose(stock(input_ids=ids).logits, theirs, atol=1e-4)
