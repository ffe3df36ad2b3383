"""Pieces every runtime shares: which models are evaluated and how they are activated, the
metrics line of a client update, the communication summary, and publishing the artifacts.

The in-process runtime (:mod:`fedoa.runtime.simulation`) and the Flower app
(:mod:`fedoa.runtime.flower`) both use these, so a run writes the same files in the same format
whichever runtime trained it.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedoa.algorithms.base import Algorithm, ClientContext, Phase
from fedoa.config import RunConfig, config_to_toml
from fedoa.kinds import ZERO_SHOT
from fedoa.model.adapters import AdapterState, state_bytes, state_digest
from fedoa.model.mixing import mixer_off
from fedoa.reports.markdown import render_report
from fedoa.reports.plots import plot_run
from fedoa.reports.results import write_json

WORK = ".run"


def config_key(cfg: RunConfig) -> str:
    """The run's identity for resuming: a checkpoint is reused only under the same config."""
    return json.dumps(cfg.to_dict(), sort_keys=True)


# ---------------------------------------------------------------------------- metrics


def metric_line(round_: int, client: str, ph: Phase) -> str:
    """One line of ``metrics.jsonl``: a local training phase of a client update."""
    return json.dumps({
        "round": round_, "client": client, "phase": ph.phase, **ph.metrics,
        "steps": ph.steps, "examples": ph.examples, "seconds": round(ph.seconds, 3),
        **({"reused": True} if ph.reused else {}),
    }) + "\n"


def truncate_metrics(path: Path, first_round: int) -> None:
    """Drop metric lines of rounds that will be re-run (a crash may have left some)."""
    if not path.exists():
        return
    keep = [
        line for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line)["round"] < first_round
    ]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def communication_summary(
    rounds: int, global_state: AdapterState, bytes_up: float, bytes_down: float,
    clients_per_round: dict[int, list[str]],
) -> dict[str, Any]:
    return {
        "rounds": rounds,
        "adapter_bytes": state_bytes(global_state),
        "bytes_up_per_round": bytes_up / rounds,
        "bytes_down_per_round": bytes_down / rounds,
        "bytes_up_total": bytes_up,
        "clients_per_round": {str(r): clients_per_round[r] for r in clients_per_round},
    }


# ---------------------------------------------------------------------------- evaluation


def eval_kinds(cfg: RunConfig, algo: Algorithm) -> list[str]:
    """The model kinds a run evaluates, in report order."""
    return list(algo.evaluated) + ([ZERO_SHOT] if cfg.eval.zero_shot else [])


def model_identity(algo: Algorithm, kind: str, client: str) -> str:
    """Models with the same identity are the same model and are evaluated once per test set."""
    return ZERO_SHOT if kind == ZERO_SHOT else algo.eval_identity(kind, client)


def activate_model(ctx: ClientContext, algo: Algorithm, kind: str, global_state: AdapterState) -> str | None:
    """Make ``kind`` (of the client of ``ctx``) the model that forward passes use; return its
    fingerprint for score caches (shared models only: the base model, a global adapter)."""
    if kind == ZERO_SHOT:
        mixer_off(ctx.am)
        ctx.am.use(None)
        return ZERO_SHOT
    algo.setup_eval(ctx, kind, global_state)
    return f"global:{state_digest(global_state)}" if kind == "global" else None


# ---------------------------------------------------------------------------- outputs


def publish(
    out_dir: Path, work: Path, cfg: RunConfig, results: dict[str, Any],
    write_adapters: Callable[[Path], None],
) -> None:
    """Write the final artifacts into ``work/final``, move each into ``out_dir``, drop ``work``.

    ``write_adapters(folder)`` writes the run's adapters (PEFT layout) into ``folder``.
    """
    final = work / "final"
    if final.exists():
        shutil.rmtree(final)
    final.mkdir(parents=True)
    (final / "config.toml").write_text(config_to_toml(cfg), encoding="utf-8")
    write_json(final / "results.json", results)
    (final / "report.md").write_text(render_report(results), encoding="utf-8")
    plot_run(results, final / "accuracy.png")
    shutil.copy(work / "metrics.jsonl", final / "metrics.jsonl")
    write_adapters(final / "adapters")
    for item in sorted(final.iterdir()):
        dest = out_dir / item.name
        if dest.is_dir():
            trash = work / f"old-{item.name}"
            if trash.exists():
                shutil.rmtree(trash)
            os.replace(dest, trash)
        os.replace(item, dest)
    shutil.rmtree(work)
