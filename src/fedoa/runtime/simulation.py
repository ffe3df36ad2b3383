"""The in-process runtime: every client on one machine, one resident base model.

Clients take turns on the same model; their adapters are tensor dicts copied into the model's
LoRA slots, so serving a client costs a few memcpy's, not a model load. Work in progress lives in
``OUT/.run/`` (metrics and a checkpoint per round); the finished artifacts are moved into ``OUT``
only at the end, so a failed or interrupted run never overwrites earlier results, and running
the same command again resumes from the last finished round.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from fedoa.algorithms.base import ClientContext
from fedoa.checkpoint import client_file_name, load_checkpoint, save_checkpoint
from fedoa.config import RunConfig
from fedoa.evaluation.matrix import evaluate_models
from fedoa.model.adapters import state_bytes
from fedoa.reports.results import build_results
from fedoa.runtime.common import (
    WORK,
    activate_model,
    communication_summary,
    config_key,
    eval_kinds,
    metric_line,
    model_identity,
    publish,
    truncate_metrics,
)
from fedoa.runtime.sampling import sample_clients
from fedoa.runtime.session import Session, open_session


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
    key = config_key(cfg)
    resumed = load_checkpoint(work / "checkpoint")
    if resumed is not None and resumed[3].get("config") == key:
        first_round = resumed[0] + 1
        global_state, client_states, meta = resumed[1], resumed[2], resumed[3]
        if progress:
            tqdm.write(f"resuming from the checkpoint after round {resumed[0]}")
    else:
        first_round = 1
        global_state = algo.init_global(am)
        client_states = {n: algo.init_client(am, n) for n in names}
        meta = {"config": key, "bytes_up": 0, "bytes_down": 0, "train_seconds": 0.0}
        (work / "metrics.jsonl").write_text("", encoding="utf-8")
    truncate_metrics(work / "metrics.jsonl", first_round)

    plan = {r: sample_clients(names, cfg.fed.client_fraction, cfg.seed, r) for r in range(1, cfg.fed.rounds + 1)}
    groups = {r: algo.training_groups(plan[r], names) for r in plan}
    total = sum(
        algo.local_steps(sum(len(session.train[m]) for m in members), r)
        for r in groups if r >= first_round for members in groups[r].values()
    )
    bar = tqdm(total=total, desc="training", unit="step", disable=not progress, dynamic_ncols=True)
    with bar, (work / "metrics.jsonl").open("a", encoding="utf-8") as log:
        for r in range(first_round, cfg.fed.rounds + 1):
            t0 = time.perf_counter()
            updates = []
            for n, members in groups[r].items():
                bar.set_postfix_str(f"round {r}/{cfg.fed.rounds} {n}")
                ctx = _trainer_context(session, n, members, client_states, bar.update)
                update = algo.client_update(ctx, global_state, r)
                updates.append(update)
                for ph in update.phases:
                    log.write(metric_line(r, n, ph))
                log.flush()
            if algo.federated:
                meta["bytes_up"] += sum(state_bytes(u.state) for u in updates if u.state is not None)
                meta["bytes_down"] += state_bytes(global_state) * len(plan[r])
            global_state = algo.aggregate(updates, global_state, r)
            meta["train_seconds"] += time.perf_counter() - t0
            save_checkpoint(work / "checkpoint", r, global_state, client_states, meta)
    communication = communication_summary(cfg.fed.rounds, global_state, meta["bytes_up"], meta["bytes_down"], plan)
    return {
        "global": global_state,
        "clients": client_states,
        "communication": communication,
        "train_seconds": meta["train_seconds"],
    }


def _trainer_context(session: Session, name: str, members: list[str], client_states, progress) -> ClientContext:
    """A client's own context, or one trainer over several clients' pooled data (``training_groups``)."""
    if members == [name]:
        return session.context(name, client_states[name], progress=progress)
    pooled = [e for m in members for e in session.train[m]]
    return ClientContext(name, session.am, pooled, {}, session.cfg, session.pad_id, progress, session.memo)


# ---------------------------------------------------------------------------- evaluation


def evaluate_session(session: Session, global_state, client_states, progress: bool):
    algo, am = session.algorithm, session.am
    evaluator = session.evaluator()
    kinds = eval_kinds(session.cfg, algo)

    def identity(kind: str, client: str) -> str:
        return model_identity(algo, kind, client)

    def activate(kind: str, client: str) -> str | None:
        return activate_model(session.context(client, client_states[client]), algo, kind, global_state)

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
    publish(
        out_dir, work, session.cfg, results,
        lambda folder: write_adapters(session, state["global"], state["clients"], folder),
    )


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
