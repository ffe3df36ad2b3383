"""The benchmark scripts' --tiny modes run end to end and report every figure (real processes)."""
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RATIOS = {
    "mfu_lora_step_seq64", "mfu_lora_step_seq128", "full_head_step_over_fedoa_step_seq128",
    "fedoa_over_fedit_round_1_epoch", "fedoa_over_fedit_round_3_epochs",
    "fedoa_global_step_over_fedit_round_1_epoch", "fedoa_global_step_over_fedit_round_3_epochs",
    "memory_32_over_2_clients_tiny", "memory_32_over_2_clients_model",
    "bytes_per_client_round_over_base", "bytes_whole_run_over_base",
    "trainer_round_over_fedoa_round", "per_option_over_cached_scoring",
    "batched_over_sequential_clients_per_s_2", "batched_over_sequential_clients_per_s_8",
    "batched_over_sequential_clients_per_s_32",
    "batched_over_sequential_eval_per_s_2", "batched_over_sequential_eval_per_s_8",
}


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--tiny", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_bench_tiny_reports_every_ratio_finite(tmp_path):
    proc = _run("bench.py", "--out", str(tmp_path / "bench.json"))
    out = json.loads((tmp_path / "bench.json").read_text())
    assert set(out["ratios"]) == RATIOS
    assert all(math.isfinite(v) and v > 0 for v in out["ratios"].values())
    # timing ratios are reported, never asserted (a shared CPU makes them noisy); sizes are exact
    assert out["ratios"]["bytes_per_client_round_over_base"] < 0.01  # an adapter, not a model
    assert {(r["clients"], r["seq"], r["r"]) for r in out["scaling"]} >= {(2, 64, 8), (32, 64, 8)}
    assert all(r["round_seconds"] > 0 and r["peak_rss_bytes"] > 0 for r in out["scaling"])
    for name in RATIOS:  # the human table has a line per ratio
        assert name in proc.stdout


@pytest.mark.slow
def test_gpu_bench_tiny_writes_its_three_tables_on_cpu(tmp_path):
    _run("gpu_bench.py", "--out", str(tmp_path), "--profile")
    out = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert out["device"] == "cpu" and out["bf16_peak_flop_per_s"] > 0
    modes = {row["mode"]: row for row in out["step"]}
    assert set(modes) == {"bf16", "4bit"}
    batched = [r for r in out["batched"] if r["mode"] == "bf16"]
    assert [r["clients"] for r in batched] == [2, 8] and all(r["ratio"] > 0 and r["batched_mfu"] > 0 for r in batched)
    assert "mfu" in modes["bf16"] and modes["bf16"]["mfu"] > 0 and modes["bf16"]["tokens_per_s"] > 0
    assert "mfu" in modes["4bit"] or modes["4bit"]["skipped"] == "bitsandbytes not installed"
    assert [r["epochs"] for r in out["client_round"]] == [1, 3]
    assert all(math.isfinite(r["ratio"]) and r["ratio"] > 0 for r in out["client_round"])
    assert [r["clients"] for r in out["memory"]] == [2, 8] and all(r["peak_bytes"] > 0 for r in out["memory"])
    md = (tmp_path / "gpu_bench.md").read_text()
    assert all(h in md for h in ("## LoRA step", "## FedOA / FedIT client round", "## Peak memory by clients",
                                 "## Batched / sequential clients per second"))
    profile = (tmp_path / "gpu_bench_profile.txt").read_text()
    assert "## by total host time" in profile and "aten::mm" in profile  # the step's matmuls were recorded


def test_regularizer_tabulates_and_plots_every_traced_personal_step(tmp_path):
    from tests.support.runs import make_tiny_run

    run = make_tiny_run(tmp_path / "cmp" / "runs" / "fedoa" / "seed0", fedoa={"trace_reg": True, "mixed_eval": False})
    make_tiny_run(tmp_path / "cmp" / "runs" / "fedit" / "seed0", method="fedit")  # no trace: left out
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in steps if x["phase"] == "personal"]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "regularizer.py"), str(tmp_path / "cmp")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (tmp_path / "cmp" / "regularizer.md").read_text()
    assert (tmp_path / "cmp" / "regularizer.png").stat().st_size > 0
    clients = md.split("## Every client")[1]
    assert clients.count("| fedoa | 0 |") == len(steps) == 6 and "fedit" not in md
    for x in steps:  # each client's row carries its own before/after from metrics.jsonl
        change = f"{(x['reg_after'] - x['reg_before']) / x['reg_before']:+.1%}" if x["reg_before"] else "n/a"
        assert (f"| {x['client']} | fedoa | 0 | {x['round']} | {x['reg_before']:.2f} | {x['reg_first']:.2f} | "
                f"{x['reg_last']:.2f} | {x['reg_after']:.2f} | {change} |") in clients


def test_regularizer_without_a_trace_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "regularizer.py"), str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "trace_reg" in proc.stderr
    assert not (tmp_path / "regularizer.md").exists()


def test_sweep_points_build_the_partitions_they_name():
    """Every point of benchmarks/sweeps.sh loads, and its clients hold what the point says."""
    import os
    from collections import Counter

    from fedoa.config import load_config
    from fedoa.evaluation.protocols import load_protocol

    flan8 = Path(os.environ.get("FEDOA_FLAN8", ROOT.parent / "shared" / "data" / "flan8"))
    if not flan8.is_dir():
        pytest.skip(f"no Flan-8 data at {flan8}")
    listed = subprocess.run(["bash", str(ROOT / "benchmarks" / "sweeps.sh")], env={**os.environ, "LIST": "1"},
                            capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    points = {line.split()[0]: line.split()[1:] for line in listed}
    assert set(points) == {"alpha100", "alpha1", "alpha0.1", "natural", "clients100"}
    tasks_held = {}
    for name, sets in points.items():
        cfg = load_config(ROOT / "benchmarks" / "flan8_sweep.toml", [*sets, f"data.path={str(flan8)!r}"])
        clients, plan = load_protocol(cfg)
        tasks_held[name] = statistics.fmean(len(Counter(r.task for r in c.train)) for c in clients)
        assert set(plan.ood_sets[clients[0].name]) == {"glue_mrpc", "stsb"}  # paraphrase held out everywhere
        assert not {r.task for c in clients for r in c.train} & {"glue_mrpc", "stsb"}
    assert tasks_held["natural"] == 1 and tasks_held["alpha100"] == 6  # one task per client .. every task
    assert tasks_held["natural"] < tasks_held["alpha0.1"] < tasks_held["alpha1"] <= tasks_held["alpha100"]
    cfg = load_config(ROOT / "benchmarks" / "flan8_sweep.toml", points["clients100"])
    assert cfg.data.num_clients == 100 and cfg.fed.client_fraction == 0.1
