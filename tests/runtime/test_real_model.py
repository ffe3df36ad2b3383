"""The embedded SmolLM2 end to end on a few examples (slow: the shared run takes ~1 min on 2 cores)."""
import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from fedoa.config import load_config
from fedoa.model.adapters import PERSONAL, load_adapter_state
from fedoa.model.base import embedded_cache_dir
from fedoa.runtime.session import open_session


@pytest.mark.slow
def test_smollm2_fedoa_run_and_stock_peft_reproduces_personal_logits(smollm2_run, monkeypatch, all_threads):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = smollm2_run.folder
    results = json.loads((run / "results.json").read_text())
    for kind in ("personal", "global", "zero_shot"):
        assert 0.0 <= results["summary"][kind]["id_accuracy"] <= 1.0
    folder = run / "adapters" / "personal" / "movie"
    state = load_adapter_state(folder)
    assert any(v.abs().sum() > 0 for k, v in state.items() if ".lora_B." in k)  # it was trained

    session = open_session(load_config(run / "config.toml"))  # the run's own config, model and data
    tok = session.tokenizer
    ids = torch.tensor([tok("Is the sentiment of this sentence positive or negative?\nA fine film.")["input_ids"]])
    am = session.am
    am.set(PERSONAL, state)
    am.use(PERSONAL)
    with torch.no_grad():
        ours = am.logits(am.hidden(ids, torch.ones_like(ids)))
    base = AutoModelForCausalLM.from_pretrained(embedded_cache_dir(), dtype=torch.float32)
    stock = PeftModel.from_pretrained(base, folder)
    with torch.no_grad():
        theirs = stock(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
