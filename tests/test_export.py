"""``fedoa export``: adapters and merged models that stock transformers + PEFT load, with the
same logits as fedoa's own model."""
import json
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedoa.cli import main
from fedoa.config import ModelConfig
from fedoa.finished import FinishedRun
from fedoa.model.base import EMBEDDED, EMBEDDED_HUB_ID, base_model_path
from tests.support.runs import make_tiny_run
from fedoa.testing import tiny_model_dir

TEXT = "Is this movie text positive or negative?\nsuperb warm fun\nAnswer:\n"


def fedoa_logits(run_dir, kind: str, client: str, ids: torch.Tensor) -> torch.Tensor:
    run = FinishedRun.open(run_dir)
    run.activate(kind, client)
    am = run.model[0]
    with torch.no_grad():
        return am.logits(am.hidden(ids, torch.ones_like(ids)))


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_base_model_names_the_hub_id_or_the_folder(tmp_path):
    assert base_model_path(ModelConfig(name=EMBEDDED)) == EMBEDDED_HUB_ID
    assert base_model_path(ModelConfig(name="Qwen/Qwen2.5-0.5B")) == "Qwen/Qwen2.5-0.5B"
    folder = tmp_path / "m"
    folder.mkdir()
    assert base_model_path(ModelConfig(name=str(folder))) == str(folder.resolve())


def test_exported_adapter_loads_in_stock_peft_with_fedoas_logits(tiny_run, tmp_path, capsys):
    out = tmp_path / "movie"
    assert main(["export", str(tiny_run), "--client", "movie", "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir().resolve())
    card = (out / "README.md").read_text()
    pc = json.loads((tiny_run / "results.json").read_text())["per_client"]["personal"]["movie"]
    assert f"base_model: {tiny_model_dir().resolve()}" in card and f"ID {100 * pc['id_accuracy']:.1f}%" in card

    ids = torch.tensor([AutoTokenizer.from_pretrained(tiny_model_dir())(TEXT)["input_ids"]])
    ours = fedoa_logits(tiny_run, "personal", "movie", ids)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir(), dtype=torch.float32)
    plain = logits_of(base, ids)
    stock = PeftModel.from_pretrained(base, out)
    assert torch.allclose(logits_of(stock, ids), ours, atol=1e-5)
    assert not torch.allclose(plain, ours, atol=1e-3)  # the adapter changes the model


def test_merged_model_loads_in_plain_transformers_with_the_same_logits(tiny_run, tmp_path):
    out = tmp_path / "merged"
    assert main(["export", str(tiny_run), "--client", "tweets", "--kind", "global", "--merge", "--out",
                 str(out), "--quiet"]) == 0
    assert not (out / "adapter_config.json").exists() and "library_name: transformers" in (out / "README.md").read_text()
    tok = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tok(TEXT)["input_ids"]])
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert torch.allclose(logits_of(merged, ids), fedoa_logits(tiny_run, "global", "tweets", ids), atol=1e-4)


def test_export_refuses_what_is_not_one_adapter_or_would_overwrite(tiny_run, tmp_path, capsys):
    feddpa = make_tiny_run(tmp_path / "feddpa", "feddpa", fed={"rounds": 1}, data={"train_per_client": 4,
                                                                                  "test_per_client": 2})
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    cases = [
        (["export", str(feddpa), "--client", "movie", "--out", str(tmp_path / "x")], "combines"),
        (["export", str(tiny_run), "--out", str(tmp_path / "y")], "--client"),
        (["export", str(tiny_run), "--client", "movie", "--out", str(foreign)], "earlier export"),
        (["export", str(tmp_path / "none"), "--client", "movie", "--out", str(tmp_path / "z")], "none"),
    ]
    for argv, needle in cases:
        assert main([*argv, "--quiet"]) == 2, argv
        err = capsys.readouterr().err.strip()
        errors = [line for line in err.splitlines() if line.startswith("fedoa: error:")]  # warnings may precede
        assert len(errors) == 1 and needle in errors[0], err
    assert (foreign / "keep.txt").read_text() == "mine" and not (tmp_path / "x").exists()
    assert main(["export", str(feddpa), "--client", "movie", "--kind", "global", "--out", str(tmp_path / "g"),
                 "--quiet"]) == 0


@pytest.mark.slow
def test_smollm2_export_names_the_hub_model_and_loads_in_stock_peft(smollm2_run, tmp_path, monkeypatch, all_threads):
    from fedoa.model.base import embedded_cache_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copytree(smollm2_run.folder, tmp_path / "run")  # the shared run stays as it was
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    assert main(["export", str(tmp_path / "run"), "--client", "movie", "--out", str(adapter), "--quiet"]) == 0
    assert main(["export", str(tmp_path / "run"), "--client", "movie", "--merge", "--out", str(merged), "--quiet"]) == 0
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == EMBEDDED_HUB_ID
    card = (adapter / "README.md").read_text()
    assert f"base_model: {EMBEDDED_HUB_ID}" in card and "Q4_1" in card and "float32" in card
    shutil.rmtree(tmp_path / "run" / ".run", ignore_errors=True)

    tok = AutoTokenizer.from_pretrained(embedded_cache_dir())
    ids = torch.tensor([tok(TEXT)["input_ids"]])
    ours = fedoa_logits(tmp_path / "run", "personal", "movie", ids)
    base = AutoModelForCausalLM.from_pretrained(embedded_cache_dir(), dtype=torch.float32)
    assert torch.allclose(logits_of(PeftModel.from_pretrained(base, adapter), ids), ours, atol=1e-4)
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    assert torch.allclose(logits_of(plain, ids), ours, atol=1e-3), (logits_of(plain, ids) - ours).abs().max()
