import json

import pytest
import torch
from safetensors.torch import load_file

import fedoa.runtime.driver as driver
from fedoa.runtime.inprocess import run_simulation
from fedoa.runtime.sampling import sample_clients
from tests.support import vader_tiny_config

SUMMARY_KEYS = ("personal", "global", "zero_shot")


def test_two_round_fedoa_run_writes_every_artifact(tmp_path):
    cfg = vader_tiny_config()
    out = tmp_path / "run"
    results = run_simulation(cfg, out, progress=False).to_json()
    for kind in SUMMARY_KEYS:
        for metric in ("id_accuracy", "ood_accuracy"):
            v = results["summary"][kind][metric]
            assert 0.0 <= v <= 1.0
    assert results["communication"]["bytes_up_per_round"] == 3 * results["communication"]["adapter_bytes"]
    assert results["timing"]["wall_seconds"] > 0
    assert set(results["matrices"]["personal"]["movie"]) == {"movie", "tweets", "nyt"}

    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["summary"] == results["summary"]
    assert (out / "report.md").read_text().startswith("# fedoa run: fedoa")
    assert (out / "accuracy.png").stat().st_size > 1000
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [line for line in lines if line["phase"] == "eval"]
    lines = [line for line in lines if line["phase"] != "eval"]
    assert len(evals) == 3 * 2 + 3 * 4  # round 1: personal + global per client; round 2 (last): 4 kinds
    assert len(lines) == 2 * 3 * 3  # rounds x clients x (personal, global, update)
    assert {line["phase"] for line in lines} == {"personal", "global", "update"}
    steps = [line for line in lines if line["phase"] != "update"]
    assert all(line["examples"] == 8 and line["seconds"] > 0 and "task_loss" in line for line in steps)
    assert all("reg" in line for line in lines if line["phase"] == "personal")
    updates = [line for line in lines if line["phase"] == "update"]
    assert all(line["update_norm"] > 0 and line["bytes"] == results["communication"]["adapter_bytes"] for line in updates)
    for folder in [out / "adapters" / "global"] + [out / "adapters" / "personal" / c for c in ("movie", "tweets", "nyt")]:
        assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    assert not (out / ".run").exists()
    resolved = (out / "config.toml").read_text()
    assert 'method = "fedoa"' in resolved and str(cfg.model.name) in resolved


def test_same_seed_same_result_and_resume_after_a_crash_is_exact(tmp_path, monkeypatch):
    cfg = vader_tiny_config(lora={"dropout": 0.1})
    full = tmp_path / "full"
    run_simulation(cfg, full, progress=False, reports=False)
    again = tmp_path / "again"
    run_simulation(cfg, again, progress=False, reports=False)
    a = load_file(str(full / "adapters" / "global" / "adapter_model.safetensors"))
    b = load_file(str(again / "adapters" / "global" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # crash right after the checkpoint of round 1, then run the same command again
    real = driver.save_checkpoint

    def crash_after_round_one(folder, round_, *args, **kw):
        real(folder, round_, *args, **kw)
        if round_ == 1:
            raise KeyboardInterrupt

    crashed = tmp_path / "crashed"
    monkeypatch.setattr(driver, "save_checkpoint", crash_after_round_one)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(cfg, crashed, progress=False, reports=False)
    assert not (crashed / "results.json").exists()
    assert (crashed / ".run" / "checkpoint" / "state.json").is_file()
    monkeypatch.setattr(driver, "save_checkpoint", real)
    run_simulation(cfg, crashed, progress=False, reports=False)
    c = load_file(str(crashed / "adapters" / "global" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)
    for client in ("movie", "nyt"):
        p = load_file(str(full / "adapters" / "personal" / client / "adapter_model.safetensors"))
        q = load_file(str(crashed / "adapters" / "personal" / client / "adapter_model.safetensors"))
        assert all(torch.equal(p[k], q[k]) for k in p)
    lines = (crashed / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 3 * 3 + 3 * 2 + 3 * 4  # the resumed run did not duplicate round 1's lines


def test_client_sampling_is_seeded_and_sized():
    names = [f"c{i}" for i in range(10)]
    r1 = sample_clients(names, 0.3, seed=0, round_=1)
    assert len(r1) == 3 and r1 == sample_clients(names, 0.3, seed=0, round_=1)
    assert any(sample_clients(names, 0.3, 0, r) != r1 for r in range(2, 6))
    assert sample_clients(names, 0.01, 0, 1) and len(sample_clients(names, 0.01, 0, 1)) == 1
    assert sample_clients(names, 1.0, 0, 3) == sorted(names)


def test_partial_participation_keeps_personal_adapters(tmp_path):
    cfg = vader_tiny_config(fed={"client_fraction": 0.34, "rounds": 3})
    results = run_simulation(cfg, tmp_path / "r", progress=False, reports=False).to_json()
    rounds = results["communication"]["updates_per_round"]
    assert len(rounds) == 3 and all(len(v) == 1 for v in rounds.values())
    assert results["communication"]["bytes_up_per_round"] == results["communication"]["adapter_bytes"]
