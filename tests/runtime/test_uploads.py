"""Compressed uploads (fed.upload) and heterogeneous ranks (lora.client_ranks) in whole in-process runs."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import fedoa.runtime.driver as driver
from fedoa.config import load_config
from fedoa.errors import ConfigError
from fedoa.model.uploads import RESIDUAL
from fedoa.runtime.inprocess import run_simulation
from tests.support import vader_tiny_config

CLIENTS = ("movie", "nyt", "tweets")


def cheap(**sections):
    """FedIT (one adapter per client), scored once at the end on ID data only."""
    cfg = vader_tiny_config(**sections)
    cfg.method = "fedit"
    cfg.eval.every, cfg.eval.ood, cfg.eval.zero_shot = 0, False, False
    return cfg


def global_adapter(folder):
    return load_file(str(folder / "adapters" / "global" / "adapter_model.safetensors"))


def test_int8_uploads_count_their_bytes_and_resume_exactly_with_the_residual(tmp_path, monkeypatch):
    cfg = cheap(fed={"upload": "int8", "rounds": 3})
    full = run_simulation(cfg, tmp_path / "full", progress=False, reports=False).to_json()
    comm = full["communication"]
    tensors = len(global_adapter(tmp_path / "full"))
    int8_bytes = comm["adapter_bytes"] // 4 + 4 * tensors  # a byte per value, a float32 scale per tensor
    assert comm["upload_format"] == "int8" and comm["bytes_up_per_client_round"] == int8_bytes
    assert comm["bytes_up_per_round"] == 3 * int8_bytes and comm["bytes_down_per_round"] == 3 * comm["adapter_bytes"]
    lines = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert {x["bytes"] for x in lines if x["phase"] == "update"} == {int8_bytes}
    assert full["failures"] == []

    real = driver.save_checkpoint

    def crash_after_round_one(folder, round_, global_state, clients, meta):
        real(folder, round_, global_state, clients, meta)
        if round_ == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(driver, "save_checkpoint", crash_after_round_one)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(cfg, tmp_path / "crashed", progress=False, reports=False)
    # the quantization residual is the client's private state, checkpointed with it
    saved = load_file(str(tmp_path / "crashed" / ".run" / "checkpoint" / "clients" / "movie.safetensors"))
    residual = [v for k, v in saved.items() if k.startswith(RESIDUAL + "::")]
    assert len(residual) == tensors and any(v.abs().sum() > 0 for v in residual)
    monkeypatch.setattr(driver, "save_checkpoint", real)
    run_simulation(cfg, tmp_path / "crashed", progress=False, reports=False)
    a, b = global_adapter(tmp_path / "full"), global_adapter(tmp_path / "crashed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_int8_upload_with_a_non_finite_scale_is_a_recorded_failure(tmp_path):
    cfg = cheap(fed={"upload": "int8"}, attack={"kind": "nan", "clients": ["movie"]})
    res = run_simulation(cfg, tmp_path / "run", progress=False, reports=False).to_json()
    assert len(res["failures"]) == 2 and all("client movie failed in validation" in f and "scale nan" in f
                                              for f in res["failures"]), res["failures"]
    assert res["communication"]["updates_per_round"] == {"1": ["nyt", "tweets"], "2": ["nyt", "tweets"]}


def test_bfloat16_uploads_are_half_the_bytes_and_land_near_the_float32_run(tmp_path):
    f32 = run_simulation(cheap(), tmp_path / "f32", progress=False, reports=False).to_json()
    bf16 = run_simulation(cheap(fed={"upload": "bfloat16"}), tmp_path / "bf16", progress=False, reports=False).to_json()
    assert bf16["communication"]["bytes_up_per_client_round"] * 2 == f32["communication"]["bytes_up_per_client_round"]
    a, b = global_adapter(tmp_path / "f32"), global_adapter(tmp_path / "bf16")
    for k in a:
        assert not torch.equal(a[k], b[k]) or ".lora_B." in k and not a[k].any()
        assert torch.allclose(a[k], b[k], rtol=0.05, atol=2e-3), k


def test_heterogeneous_ranks_train_pad_and_export_loadable_adapters(tmp_path):
    """lora.r = 4; movie 1, tweets 2, nyt 2: the components 2..3 of the global adapter are held by
    nobody, so their change is zero (HetLoRA padding of the change): LoRA B's columns 2..3 stay at
    their zero init. FedOA's personal adapters keep rank lora.r."""
    cfg = vader_tiny_config(lora={"client_ranks": {"movie": 1, "tweets": 2, "nyt": 2}})
    res = run_simulation(cfg, tmp_path / "run", progress=False).to_json()
    g = global_adapter(tmp_path / "run")
    bs = [v for k, v in g.items() if ".lora_B." in k]
    assert all(v.shape[1] == 4 and not v[:, 2:].any() for v in bs) and any(v[:, 1].any() for v in bs)
    comm = res["communication"]
    assert comm["client_ranks"] == {"movie": 1, "nyt": 2, "tweets": 2}
    per_rank = comm["adapter_bytes"] // 4
    assert comm["bytes_up_per_round"] == (1 + 2 + 2) * per_rank == comm["bytes_down_per_round"]
    assert comm["bytes_up_per_client_round"] == pytest.approx(5 / 3 * per_rank)
    assert "ranks movie 1" in (tmp_path / "run" / "report.md").read_text()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(cfg.model.name)
    for folder in (tmp_path / "run" / "adapters" / "global", tmp_path / "run" / "adapters" / "personal" / "movie"):
        model = PeftModel.from_pretrained(base, str(folder), adapter_name="x")
        assert model.peft_config["x"].r == 4
        base = model.unload()


def test_a_rank_above_lora_r_or_an_unknown_client_is_a_one_line_error(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[lora]\nr = 4\nclient_ranks = { movie = 8 }\n")
    with pytest.raises(ConfigError) as e:
        load_config(toml)
    assert "lora.client_ranks.movie" in str(e.value) and "1..lora.r = 4" in str(e.value)
    cfg = cheap(lora={"client_ranks": {"films": 2}})
    with pytest.raises(ConfigError) as e:
        run_simulation(cfg, tmp_path / "run", progress=False, reports=False)
    assert "lora.client_ranks" in str(e.value) and "films" in str(e.value)
    assert not (tmp_path / "run" / ".run").exists()


def test_dp_with_unequal_ranks_and_bfloat16_uploads_runs_and_leaves_unheld_components_alone(tmp_path):
    """DP-FedAvg sums each decoded upload padded to the global rank: components nobody holds
    receive only the noise."""
    cfg = cheap(fed={"upload": "bfloat16", "rounds": 1}, dp={"noise_multiplier": 0.5, "clip_norm": 1.0},
                lora={"client_ranks": {"movie": 1, "tweets": 2, "nyt": 2}})
    res = run_simulation(cfg, tmp_path / "run", progress=False, reports=False).to_json()
    assert res["failures"] == [] and res["dp"]["epsilon"] > 0
    g = global_adapter(tmp_path / "run")
    bs = [v for k, v in g.items() if ".lora_B." in k]
    noise = torch.cat([v[:, 2:].flatten() for v in bs])
    # B starts at zero: above rank 2 it is the noise alone, std z * C / (q n) = 0.5 / 3
    assert noise.std().item() == pytest.approx(0.5 / 3, rel=0.1)


def test_validation_checks_each_upload_against_the_rank_its_client_declared():
    from fedoa.algorithms.base import ClientUpdate
    from fedoa.config import TrustConfig
    from fedoa.model.uploads import encode_change, narrow
    from fedoa.runtime.trust import validate

    g = {"m.lora_A.weight": torch.randn(4, 6), "m.lora_B.weight": torch.randn(5, 4)}
    received = {"low": narrow(g, 2), "full": g}
    full_rank = {k: v + 0.01 for k, v in g.items()}  # what a rank-2 client may not send
    verdicts = validate([ClientUpdate("low", full_rank, 8), ClientUpdate("full", full_rank, 8)], g,
                        {"low": 8, "full": 8}, TrustConfig(), references=received)
    assert not verdicts[0].accepted and "shape (4, 6), expected (2, 6)" in verdicts[0].reason
    assert verdicts[1].accepted
    # compressed: the payload's shapes are checked against the declared rank before decoding
    up, _ = encode_change(full_rank, g, None, "int8")
    bad = ClientUpdate("low", None, 8, upload=up)
    [v] = validate([bad], g, {"low": 8}, TrustConfig(), references=received, fmt="int8")
    assert not v.accepted and "expected (2, 6)" in v.reason and bad.state is None
