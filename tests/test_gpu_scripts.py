"""The GPU benchmark scripts, run on the CPU with the tiny model and tiny sizes (TINY=1): the same
steps as on a lent H100, so a device session only has to run them."""
import os
import subprocess
import tarfile
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLAN8 = Path(os.environ.get("FEDOA_FLAN8", ROOT.parent / "shared" / "data" / "flan8"))


@pytest.mark.slow
def test_gpu_flan8_comparison_script_runs_on_cpu_in_tiny_mode(tmp_path):
    env = {**os.environ, "TINY": "1", "PYTHON": sys.executable, "FLAN8": str(FLAN8), "OUT": str(tmp_path / "out"),
           "WORKDIR": str(tmp_path / "work"), "SEEDS": "1", "METHODS": "fedit,fedoa", "BUDGET_S": "300",
           "TASKS": "sst2,sentiment140",  # one category: the within-category protocol holds, 2 clients not 8
           "OMP_NUM_THREADS": "1", "FEDOA_CACHE": os.environ.get("FEDOA_CACHE", str(Path.home() / ".cache" / "fedoa"))}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_flan8.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out"
    assert (out / "compare.md").is_file() and (out / "compare.json").is_file() and (out / "compare.html").is_file()
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
    assert sorted(n.split("/")[1] for n in names if n.endswith("seed0/results.json")) == ["fedit", "fedoa"]
    assert not [n for n in names if "adapters" in n]
    assert len(list(out.iterdir())) <= 8  # what one device call brings back
    # RESUME (the same lines of the script in both regimes) is checked by the reference-regime test below


REFERENCE_METHODS = ["ditto", "feddpa", "fedit", "fedoa", "fedoa-l0", "local"]


@pytest.mark.slow
def test_gpu_flan8_reference_regime_runs_on_cpu_in_tiny_mode_and_resumes(tmp_path):
    """REGIME=reference: the reference preset, the six methods of issue 18 item 6, seed 0, one folder."""
    import json

    env = {**os.environ, "TINY": "1", "REGIME": "reference", "ROUNDS": "1", "TASKS": "sst2,sentiment140",
           "PYTHON": sys.executable, "FLAN8": str(FLAN8), "OUT": str(tmp_path / "out"), "WORKDIR": str(tmp_path / "work"),
           "BUDGET_S": "500", "OMP_NUM_THREADS": "1",
           "FEDOA_CACHE": os.environ.get("FEDOA_CACHE", str(Path.home() / ".cache" / "fedoa"))}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_flan8.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out"
    assert len(list(out.iterdir())) <= 8  # what one device call brings back
    summary = json.loads((out / "compare.json").read_text())
    assert sorted(r["path"].split("/")[1] for r in summary["runs"]) == REFERENCE_METHODS
    assert {r["status"] for r in summary["runs"]} == {"ran"} and summary["complete"]
    md = (out / "compare.md").read_text()
    assert "## Paired differences" in md and "wall s" in md
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
        cfg = tar.extractfile("runs/fedoa-l0/seed0/config.toml").read().decode()
    assert sorted(n.split("/")[1] for n in names if n.endswith("seed0/results.json")) == REFERENCE_METHODS
    assert "compare.png" in names and not [n for n in names if "adapters" in n]
    for line in ("epochs = 3", "batch_size = 128", "micro_batch_size = 8", "lr = 0.0003", 'schedule = "linear"',
                 "rounds = 1", "regular_weight = 0.0", "seed = 0"):
        assert line in cfg, line  # the reference preset, lambda 0, the rounds asked for
    device = (out / "device.txt").read_text()
    keys = subprocess.run([sys.executable, "-m", "fedoa.cli", "config", "--keys"], capture_output=True, text=True,
                          env=env).stdout
    known = "runtime.batch_clients" in keys
    assert ("runtime.batch_clients = on" in device) == known
    assert ("runtime.batch_clients: not a key of this fedoa" in device) != known
    assert list(out.glob("resume.tgz.*"))  # the step memo travels for a next call

    again = {**env, "RESUME": str(out), "OUT": str(tmp_path / "out2"), "WORKDIR": str(tmp_path / "work2")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_flan8.sh")], env=again, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(6 finished runs)" in proc.stdout and "the step memo" in proc.stdout
    assert {r["status"] for r in json.loads((tmp_path / "out2" / "compare.json").read_text())["runs"]} == {"reused"}
