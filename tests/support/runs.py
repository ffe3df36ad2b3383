"""Finished runs on the tiny model, for the verbs that work on a run folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.support import vader_tiny_config
from fedoa.testing import tiny_model_dir

CLIENTS = ("movie", "tweets", "nyt")


def tiny_cli_args() -> list[str]:
    """``--set`` arguments of a seconds-long ``fedoa run`` on the tiny model (two VADER domains)."""
    sets = [f"model.name={str(tiny_model_dir())!r}", "fed.rounds=1", "fed.personal_start_round=1",
            "data.train_per_client=4", "data.test_per_client=4", "data.tasks=['movie','nyt']", "train.batch_size=4",
            "train.micro_batch_size=4", "model.max_length=64"]
    return [a for s in sets for a in ("--set", s)]


def make_tiny_run(folder: Path, method: str = "fedoa", reports: bool = False, **sections) -> Path:
    """A finished two-round run of ``method`` on three VADER domains (seconds); ``reports``: publish
    report.md, report.html and accuracy.png too (a second or more: only for tests that read them)."""
    from fedoa.runtime.inprocess import run_simulation

    cfg = vader_tiny_config(**sections)
    cfg.method = method
    run_simulation(cfg, folder, progress=False, reports=reports)
    return folder


#: the embedded SmolLM2 on two VADER domains, one round, one step per local update: ~30 s on 2 cores
SMOLLM2_SETS = ["data.tasks=['movie','tweets']", "data.train_per_client=4", "data.test_per_client=4", "fed.rounds=1",
                "fed.personal_start_round=1", "train.batch_size=4", "train.micro_batch_size=4", "eval.batch_size=8",
                "eval.extra_ood=false"]


@dataclass
class CliRun:
    folder: Path  # the run folder
    cache: Path  # the FEDOA_CACHE it ran with
    stderr: str


def smollm2_cli_run(root: Path) -> CliRun:
    """``fedoa run --quiet`` on the real SmolLM2 in a fresh model cache (the VADER files linked in):
    the embedded GGUF is de-quantized in this run, as on a first use."""
    import os
    import subprocess
    import sys

    from fedoa.paths import cache_dir

    cache = root / "cache"
    cache.mkdir(parents=True)
    (cache / "data").symlink_to(cache_dir() / "data")
    folder = root / "run"
    args = [a for s in SMOLLM2_SETS for a in ("--set", s)]
    done = subprocess.run([sys.executable, "-m", "fedoa.cli", "run", "--out", str(folder), "--quiet", *args],
                          capture_output=True, text=True,
                          env={**os.environ, "FEDOA_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return CliRun(folder, cache, done.stderr)
