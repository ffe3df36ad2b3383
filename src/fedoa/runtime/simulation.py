"""The in-process runtime: every client on one machine, one resident base model.

Clients take turns on the same model; their adapters are tensor dicts copied into the model's
LoRA slots, so serving a client costs a few memcpy's, not a model load. Work in progress lives in
``OUT/.run/`` (metrics and a checkpoint per round); the finished artifacts are moved into ``OUT``
only at the end, so a failed or interrupted run never overwrites earlier results, and running
the same command again resumes from the last finished round.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from fedoa.checkpoint import client_file_name, load_checkpoint, save_checkpoint
from fedoa.config import RunConfig, config_to_toml
from fedoa.evaluation.matrix import evaluate_models
from fedoa.model.adapters import state_bytes
from fedoa.reports.markdown import render_report
from fedoa.reports.plots import plot_run
from fedoa.reports.results import build_results, write_json
from fedoa.runtime.sampling import sample_clients
from fedoa.runtime.session import Session, open_session

WORK = ".run"


def run_simulation(
    cfg: RunConfig, out_dir: str | Path, progress: bool = True, fresh: bool = False, session: Session | None = None
) -> dict[str, Any]:
    start = time.perf_counter()
    session = session or open_session(cfg)  # fails on bad input before anything is written
    out_dir = Path(out_dir)
    work = out_dir / WORK
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    state = _train(session, work, progress)
    eval_start = time.perf_counter()
    scores = evaluate_session(session, state["global"], state["clients"], progress)
    timing = {
        "wall_seconds": time.perf_counter() - start,
        "setup_seconds": session.setup_seconds,
        "train_seconds": state["train_seconds"],
        "eval_seconds": time.perf_counter() - eval_start,
    }
    results = build_results(cfg, session.plan, scores, state["communication"], timing)
    _publish(session, out_dir, work, results, state)
    return results


# ---------------------------------------------------------------------------- training


def _train(session: Session, work: Path, progress: bool) -> dict[str, Any]:
    cfg, am, algo = session.cfg, session.am, session.algorithm
    names = [c.name for c in session.clients]
    for n in names:
        client_file_name(n)  # reject names that cannot become file names before round 1
    config_key = json.dumps(cfg.to_dict(), sort_keys=True)
    resumed = load_checkpoint(work / "checkpoint")
    if resumed is not None and resumed[3].get("config") == config_key:
        first_round = resumed[0] + 1
        global_state, client_states, meta = resumed[1], resumed[2], resumed[3]
        if progress:
            tqdm.write(f"resuming from the checkpoint after round {resumed[0]}")
    else:
        first_round = 1
        global_state = algo.init_global(am)
        client_states = {n: algo.init_client(am, n) for n in names}
        meta = {"config": config_key, "bytes_up": 0, "bytes_down": 0, "train_seconds": 0.0}
        (work / "metrics.jsonl").write_text("", encoding="utf-8")
    _truncate_metrics(work / "metrics.jsonl", first_round)

    plan = {r: sample_clients(names, cfg.fed.client_fraction, cfg.seed, r) for r in range(1, cfg.fed.rounds + 1)}
    total = sum(algo.local_steps(len(session.train[n]), r) for r in plan if r >= first_round for n in plan[r])
    bar = tqdm(total=total, desc="training", unit="step", disable=not progress, dynamic_ncols=True)
    with bar, (work / "metrics.jsonl").open("a", encoding="utf-8") as log:
        for r in range(first_round, cfg.fed.rounds + 1):
            t0 = time.perf_counter()
            updates = []
            for n in plan[r]:
                bar.set_postfix_str(f"round {r}/{cfg.fed.rounds} {n}")
                ctx = session.context(n, client_states[n], progress=bar.update)
                update = algo.client_update(ctx, global_state, r)
                updates.append(update)
                for ph in update.phases:
                    log.write(json.dumps({
                        "round": r, "client": n, "phase": ph.phase, **ph.metrics,
                        "steps": ph.steps, "examples": ph.examples, "seconds": round(ph.seconds, 3),
                    }) + "\n")
                log.flush()
            if algo.federated:
                meta["bytes_up"] += sum(state_bytes(u.state) for u in updates if u.state is not None)
                meta["bytes_down"] += state_bytes(global_state) * len(plan[r])
            global_state = algo.aggregate(updates, global_state, r)
            meta["train_seconds"] += time.perf_counter() - t0
            save_checkpoint(work / "checkpoint", r, global_state, client_states, meta)
    rounds = cfg.fed.rounds
    communication = {
        "rounds": rounds,
        "adapter_bytes": state_bytes(global_state),
        "bytes_up_per_round": meta["bytes_up"] / rounds,
        "bytes_down_per_round": meta["bytes_down"] / rounds,
        "bytes_up_total": meta["bytes_up"],
        "clients_per_round": {str(r): plan[r] for r in plan},
    }
    return {
        "global": global_state,
        "clients": client_states,
        "communication": communication,
        "train_seconds": meta["train_seconds"],
    }


def _truncate_metrics(path: Path, first_round: int) -> None:
    """Drop metric lines of rounds that will be re-run (a crash may have left some)."""
    if not path.exists():
        return
    keep = [
        line for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line)["round"] < first_round
    ]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


# ---------------------------------------------------------------------------- evaluation


def evaluate_session(session: Session, global_state, client_states, progress: bool):
    algo, am = session.algorithm, session.am
    evaluator = session.evaluator()
    kinds = list(algo.evaluated) + (["zero_shot"] if session.cfg.eval.zero_shot else [])

    def identity(kind: str, client: str) -> str:
        return "zero_shot" if kind == "zero_shot" else algo.eval_identity(kind, client)

    def activate(kind: str, client: str) -> None:
        if kind == "zero_shot":
            am.use(None)
        else:
            algo.setup_eval(am, kind, client_states[client], global_state)

    todo = {}
    for kind in kinds:
        for c in session.plan.clients:
            for s in session.plan.sets_of(c):
                todo[(identity(kind, c), s)] = len(evaluator.prepared[s])
    bar = tqdm(total=sum(todo.values()), desc="evaluating", unit="ex", disable=not progress, dynamic_ncols=True)
    with bar:
        return evaluate_models(evaluator, session.plan, kinds, identity, activate, bar.update)



# ---------------------------------------------------------------------------- outputs


def _publish(session: Session, out_dir: Path, work: Path, results: dict[str, Any], state: dict[str, Any]) -> None:
    """Write the final artifacts into ``work/final`` then move each into ``out_dir``."""
    final = work / "final"
    if final.exists():
        shutil.rmtree(final)
    final.mkdir(parents=True)
    (final / "config.toml").write_text(config_to_toml(session.cfg), encoding="utf-8")
    write_json(final / "results.json", results)
    (final / "report.md").write_text(render_report(results), encoding="utf-8")
    plot_run(results, final / "accuracy.png")
    shutil.copy(work / "metrics.jsonl", final / "metrics.jsonl")
    write_adapters(session, state["global"], state["clients"], final / "adapters")
    for item in sorted(final.iterdir()):
        dest = out_dir / item.name
        if dest.is_dir():
            trash = work / f"old-{item.name}"
            if trash.exists():
                shutil.rmtree(trash)
            os.replace(dest, trash)
        os.replace(item, dest)
    shutil.rmtree(work)


def write_adapters(session: Session, global_state, client_states, folder: Path) -> None:
    """PEFT-format adapters: ``global/`` and ``personal/<client>/`` (what the method exports)."""
    wrote_global = False
    for client, cstate in client_states.items():
        for kind, st in session.algorithm.exported_adapters(cstate, global_state).items():
            if kind == "global":
                if not wrote_global:
                    session.am.save(st, folder / "global")
                    wrote_global = True
            else:
                session.am.save(st, folder / kind / client)
