"""Finished runs on the tiny model, for the verbs that work on a run folder."""
from __future__ import annotations

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
