"""The in-process transport: every client in this process, one resident base model.

Clients take turns on the same model; their adapters are tensor dicts copied into the model's
LoRA slots, so serving a client costs a few memcpy's, not a model load. Their private states
live in memory and in the driver's checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from fedoa.algorithms.base import (
    Algorithm,
    ClientContext,
    ClientState,
    ClientUpdate,
    ServerContext,
    batched_updates,
)
from fedoa.config import RunConfig
from fedoa.evaluation.batched import evaluate_batched
from fedoa.evaluation.matrix import EvalPlan, evaluate_models
from fedoa.model.adapters import AdapterState
from fedoa.reports.publish import render_reports
from fedoa.reports.results import Results
from fedoa.model.uploads import narrow, widen
from fedoa.runtime.common import activate_model, batches_clients, client_rank, client_upload, describe_model, model_identity
from fedoa.runtime.driver import Schedule, Scores, Transport, run_federation
from fedoa.runtime.session import Session, open_session


class InProcess(Transport):
    def __init__(self, session: Session, progress: bool = True):
        self.session, self.progress = session, progress
        self.am = session.am
        self.setup_seconds = session.setup_seconds
        self.states: dict[str, ClientState] = {}
        self.bar = None

    def open(self, algo: Algorithm) -> list[str]:
        self.algo = algo
        algo.attach_server(ServerContext(self.session.am, self.session.encoder, self.session.cfg))
        return [c.name for c in self.session.clients]

    def eval_plan(self) -> EvalPlan:
        return self.session.plan

    def begin(self, schedule: Schedule) -> None:
        total = sum(
            self.algo.local_steps(sum(len(self.session.train[m]) for m in members), r)
            for r, groups in schedule.items() for members in groups.values()
        )
        self.rounds = max(schedule, default=0)
        self.bar = tqdm(total=total, desc="training", unit="step", disable=not self.progress, dynamic_ncols=True)

    def examples_of(self, client: str) -> int:
        return len(self.session.train[client])

    def rank_of(self, client: str) -> int:
        return client_rank(self.session.cfg, client)

    def train(self, round_: int, groups: dict[str, list[str]], global_state: AdapterState) -> dict[str, ClientUpdate]:
        cfg = self.session.cfg
        ranks = {t: self.rank_of(t) for t in groups}
        received = {t: narrow(global_state, r) for t, r in ranks.items()}  # each cut to its client's rank
        equal = all(r == cfg.lora.r for r in ranks.values())  # one joint loop needs one start
        updates = self._batched(round_, groups, global_state) if self.batching and equal else None
        if updates is None:
            updates = {}
            for trainer, members in groups.items():
                self.bar.set_postfix_str(f"round {round_}/{cfg.fed.rounds} {trainer}")
                updates[trainer] = self.algo.client_update(self._context(trainer, members),
                                                           widen(received[trainer], cfg.lora.r), round_)
        out = {t: client_upload(cfg, t, self.states.get(t, {}) if groups[t] == [t] else {}, u, received[t], ranks[t])
               for t, u in updates.items()}
        if round_ == self.rounds:
            self.bar.close()
        return out

    @property
    def batching(self) -> bool:
        """``runtime.batch_clients``: 'auto' batches on CUDA only (on CPU it measured slower). Training
        and evaluation alike."""
        return batches_clients(self.session.cfg, self.am.device)

    def _batched(self, round_: int, groups: dict[str, list[str]], global_state: AdapterState):
        """Every trainer's update from one joint loop, or None (pooled trainers; a method that cannot)."""
        if any(members != [trainer] for trainer, members in groups.items()):
            return None
        self.bar.set_postfix_str(f"round {round_}/{self.session.cfg.fed.rounds} {len(groups)} clients batched")
        ctxs = [self._context(t, [t]) for t in groups]
        return batched_updates(self.algo, ctxs, global_state, round_, self.bar.update)

    def _context(self, name: str, members: list[str]) -> ClientContext:
        """A client's own context, or one trainer over several clients' pooled data (``training_groups``)."""
        s = self.session
        if members == [name]:
            return s.context(name, self.states[name], progress=self.bar.update)
        pooled = [e for m in members for e in s.train[m]]
        return ClientContext(name, s.am, pooled, {}, s.cfg, s.pad_id, self.bar.update, s.memo)

    def evaluate(self, plan: EvalPlan, kinds: list[str], global_state: AdapterState) -> tuple[EvalPlan, Scores]:
        evaluator = self.session.evaluator()

        def identity(kind: str, client: str) -> str:
            return model_identity(self.algo, kind, client)

        def activate(kind: str, client: str) -> str | None:
            return activate_model(self.session.context(client, self.states[client]), self.algo, kind, global_state)

        if not plan.limit:  # the final evaluation: what was cut to fit, per test set
            self.truncated_test = {s: ps.truncated for s, ps in evaluator.prepared.items() if ps.truncated}
        todo = {(identity(k, c), s): len(evaluator.prepared[s].head(plan.limit or None)) for k in kinds for c in plan.clients for s in plan.sets_of(c)}
        def describe(kind: str, client: str):
            return describe_model(self.session.context(client, self.states[client]), self.algo, kind, global_state)

        with tqdm(total=sum(todo.values()), desc="evaluating", unit="ex", disable=not self.progress,
                  dynamic_ncols=True) as bar:
            if self.batching:  # every model's option scores in one pass per batch of records
                return plan, evaluate_batched(evaluator, plan, kinds, identity, describe, activate, global_state,
                                              bar.update)
            return plan, evaluate_models(evaluator, plan, kinds, identity, activate, bar.update)

    def client_states(self) -> dict[str, ClientState]:
        return self.states

    def restore(self, client_states: dict[str, ClientState], meta: dict[str, Any]) -> None:
        self.states = client_states

    def extra_results(self) -> dict[str, Any]:
        data = {**self.session.data, "truncated_test": getattr(self, "truncated_test", {})}
        return {"data": data} if any(data.values()) else {}

    def write_adapters(self, folder: Path, global_state: AdapterState) -> None:
        """PEFT-format adapters: ``global/`` and ``personal/<client>/`` (what the method exports)."""
        for client, state in self.states.items():
            for kind, st in self.algo.exported_adapters(state, global_state).items():
                target = folder / "global" if kind == "global" else folder / kind / client
                if not (target / "adapter_model.safetensors").exists():
                    self.am.save(st, target)
        folder.mkdir(parents=True, exist_ok=True)


def run_simulation(
    cfg: RunConfig, out_dir: str | Path, progress: bool = True, fresh: bool = False, session: Session | None = None,
    restart_on_change: bool = False, reports: bool = True, replace: bool = False,
) -> Results:
    """``fedoa run``: the federation in this process. Bad input fails before anything is written.
    ``reports = False`` publishes the numbers (results, metrics, adapters) without the human
    reports (report.md, report.html, accuracy.png)."""
    session = session or open_session(cfg)
    return run_federation(session.cfg, InProcess(session, progress), out_dir, fresh, restart_on_change,
                          render=render_reports if reports else None, replace=replace)
