"""Crash safety: a run killed with SIGKILL at a random point mid-round resumes, when started again,
to adapters bit-identical to an uninterrupted run's."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from fedoa.config import config_to_toml
from tests.support import vader_tiny_config

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def fedoa_run(config, out) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedoa.cli", "run", "--config", str(config), "--out", str(out),
                             "--quiet"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def adapters(out) -> dict[str, dict]:
    return {p.relative_to(out).as_posix(): load_file(str(p)) for p in sorted(out.glob("adapters/**/*.safetensors"))}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[f][k], b[f][k]) for f in a for k in a[f])


@pytest.mark.parametrize("batch", ["off", "on"])  # clients one by one; all at once (docs/batched.md)
def test_sigkill_mid_round_then_the_same_command_ends_bit_identical(tmp_path, batch):
    cfg = vader_tiny_config(fed={"rounds": 4}, lora={"dropout": 0.1}, runtime={"batch_clients": batch})
    config = tmp_path / "run.toml"
    config.write_text(config_to_toml(cfg))
    whole = fedoa_run(config, tmp_path / "whole")
    assert whole.wait(300) == 0, whole.stderr.read()

    rng = random.Random(os.environ.get("FEDOA_CRASH_SEED", "2026"))
    kill_at = rng.randint(7, 25)  # metrics lines written when the kill comes: inside round 2 or 3
    crashed = tmp_path / "crashed"
    proc = fedoa_run(config, crashed)
    metrics = crashed / ".run" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= kill_at):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    print(f"killed after {kill_at} metrics lines")
    assert not (crashed / "results.json").exists()

    again = fedoa_run(config, crashed)
    assert again.wait(300) == 0, again.stderr.read()
    assert same(adapters(tmp_path / "whole"), adapters(crashed))
    assert (crashed / "metrics.jsonl").read_text().count('"phase": "update"') == 4 * 3  # no round twice
