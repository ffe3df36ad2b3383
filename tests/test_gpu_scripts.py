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

    again = {**env, "RESUME": str(out), "OUT": str(tmp_path / "out2"), "WORKDIR": str(tmp_path / "work2")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_flan8.sh")], env=again, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(2 finished runs)" in proc.stdout
    for method in ("fedit", "fedoa"):  # not trained again: the results (with their wall times) are the same bytes
        with tarfile.open(out / "runs.tar.gz") as tar:
            before = tar.extractfile(f"runs/{method}/seed0/results.json").read()
        assert (tmp_path / "work2" / "runs" / method / "seed0" / "results.json").read_bytes() == before
