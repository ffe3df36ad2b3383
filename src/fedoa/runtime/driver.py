"""THE round loop, written once for every runtime.

The driver decides everything a federation decides: resume, which clients take part in a round,
what counts as an update, aggregation, the checkpoint, metrics, communication accounting,
evaluation and the published artifacts. A :class:`Transport` only carries the work to the
clients and back: :class:`fedoa.runtime.inprocess.InProcess` (every client in this process, one
resident model) or :class:`fedoa.runtime.flower.transport.FlowerTransport` (one Flower SuperNode
per client). Both runtimes therefore produce the same adapters from the same inputs by
construction.

Work in progress lives in ``OUT/.run/`` (metrics and a checkpoint per round); the finished
artifacts are moved into ``OUT`` only at the end, so a failed or interrupted run never
overwrites earlier results, and running the same command again resumes from the last finished
round. A config that differs from the checkpoint's stops the run (exit 2, naming the keys)
unless the caller asks to start afresh. A folder that holds another run's finished results
(made with another config) is that run's: a new run stops there (exit 2, naming the keys) unless
the caller asks to replace them; the same config again reruns it (``make run`` twice).
"""
from __future__ import annotations

import json
import shutil
import time
import tomllib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedoa.algorithms import make_algorithm
from fedoa.algorithms.base import Algorithm, ClientState, ClientUpdate
from fedoa.checkpoint import load_checkpoint, save_checkpoint
from fedoa.config import RunConfig, changed_keys, config_to_toml, flat_keys
from fedoa.data.records import check_names
from fedoa.errors import ConfigError, FedoaError
from fedoa.evaluation.matrix import EvalPlan, SetScores, matrices, per_client, summarize
from fedoa.io import FolderLock, fsync_dir, fsync_tree, read_jsonl, write_text
from fedoa.kinds import GLOBAL, PERSONAL
from fedoa.model.adapters import AdapterModel, AdapterState, state_bytes, state_digest
from fedoa.reports.results import Results, build_results, clean
from fedoa.reports.tracking import Tracker
from fedoa.model.uploads import narrow, pad_change
from fedoa.runtime.common import eval_kinds, phase_line, upload_bytes
from fedoa.runtime.ledger import FailureEntry, RunLedger
from fedoa.runtime.sampling import sample_clients
from fedoa.runtime.trust import audit_line, dp_release, dp_sum, epsilon, validate
from fedoa.training.loop import NON_FINITE

WORK = ".run"
Scores = dict[str, dict[str, dict[str, SetScores]]]  # kind -> client -> test set -> scores
Schedule = dict[int, dict[str, list[str]]]  # round -> trainer -> the clients whose data it uses
#: ``render(folder, results, metrics_lines)`` writes the human reports of a finished run into
#: ``folder`` (``fedoa.reports.publish.render_reports``); the driver itself renders nothing
Renderer = Callable[[Path, Results, list[dict[str, Any]]], None]


class RoundError(FedoaError):
    """A round cannot produce a model (too few valid updates). Not the user's input: exit 1."""

    exit_code = 1


@dataclass
class Failure:
    """A client that did not deliver: why, whether it is gone, whether it received the global state."""

    reason: str
    lost: bool = False
    sent: bool = True
    node: int | None = None  # the Flower node, where there is one


class Transport(ABC):
    """How the driver reaches its clients."""

    #: the adapter shapes (initialization, export); the transport's own model
    am: AdapterModel
    #: seconds spent loading data and model and joining clients
    setup_seconds: float = 0.0
    #: clients whose models could not be evaluated
    eval_failures: tuple | list[FailureEntry] = ()

    @abstractmethod
    def open(self, algo: Algorithm) -> list[str]:
        """Everything before round 1 (data, model, nodes); the clients' names. Fails on bad input."""

    @abstractmethod
    def eval_plan(self) -> EvalPlan:
        """Which test sets each client's models meet."""

    @abstractmethod
    def examples_of(self, client: str) -> int:
        """Training examples the client declared when it joined (an upload may not claim more)."""

    @abstractmethod
    def rank_of(self, client: str) -> int:
        """The LoRA rank the client declared (``lora.client_ranks`` in-process, its node's setting on
        Flower): it receives the global adapter cut to this rank, and its upload must have it."""

    def begin(self, schedule: Schedule) -> None:
        """The rounds still to run and who trains in each (progress bars)."""

    @abstractmethod
    def train(self, round_: int, groups: dict[str, list[str]], global_state: AdapterState) -> dict[str, ClientUpdate | Failure]:
        """One round's client updates from ``global_state``, per trainer of ``groups``."""

    @abstractmethod
    def evaluate(self, plan: EvalPlan, kinds: list[str], global_state: AdapterState) -> tuple[EvalPlan, Scores]:
        """Scores of every evaluated model; the plan restricted to the clients that could be scored."""

    @abstractmethod
    def client_states(self) -> dict[str, ClientState]:
        """Private client state to checkpoint here (in-process), or {} (it lives on the nodes)."""

    def restore(self, client_states: dict[str, ClientState], meta: dict[str, Any]) -> None:
        """Continue from a checkpoint (``meta``: what :meth:`meta` returned when it was written)."""

    def meta(self) -> dict[str, Any]:
        """JSON state of the transport to checkpoint (e.g. which round each node's state is at)."""
        return {}

    def round_done(self, round_: int, updates: list[ClientUpdate]) -> None:
        """The driver aggregated these updates of ``round_``."""

    def log(self, message: str) -> None:
        """A line for the operator (Flower's ServerApp log; the in-process runtime stays quiet)."""

    @abstractmethod
    def write_adapters(self, folder: Path, global_state: AdapterState) -> None:
        """PEFT-format adapters of the run under ``folder``."""

    def extra_results(self) -> dict[str, Any]:
        """Runtime-specific entries of results.json."""
        return {}


# ---------------------------------------------------------------------------- the run


def run_federation(
    cfg: RunConfig, transport: Transport, out_dir: str | Path, fresh: bool = False, restart_on_change: bool = False,
    render: Renderer | None = None, replace: bool = False,
) -> Results:
    """Train and evaluate ``cfg`` through ``transport``; publish into ``out_dir`` (the human reports
    only with ``render``); return the results. ``replace``: another run's finished results in
    ``out_dir`` may be replaced (else that stops the run before anything is written)."""
    start = time.perf_counter()
    cfg = cfg.clone()  # validated again, cross-section checks included
    algo = make_algorithm(cfg)
    names = transport.open(algo)  # bad data, model or nodes fail here, before anything is written
    check_names(names, "client", "data")  # names that cannot become file names fail before round 1
    unknown = sorted(set(cfg.lora.client_ranks) - set(names))
    if unknown:
        raise ConfigError(f"names client(s) {unknown} that are not in this run (clients: {', '.join(names)})",
                          where="lora.client_ranks")
    plan = transport.eval_plan()
    out_dir = Path(out_dir)
    work = out_dir / WORK
    writable(out_dir)
    lock = FolderLock(out_dir)
    if not lock.acquire():
        raise FedoaError(f"another run is writing into this folder ({lock.holder()}); wait for it, stop it, or use "
                         "another --out", where=str(out_dir))
    try:
        if not replace:
            refuse_another_runs_results(out_dir, cfg)
        return _run_locked(cfg, algo, transport, names, plan, out_dir, work, fresh, restart_on_change, render, start)
    finally:
        lock.release()


def _run_locked(cfg: RunConfig, algo: Algorithm, transport: Transport, names: list[str], plan: EvalPlan,
                out_dir: Path, work: Path, fresh: bool, restart_on_change: bool, render: Renderer | None,
                start: float) -> Results:
    if fresh and work.exists():
        shutil.rmtree(work)
    state = Resume(cfg, work, restart_on_change).load(algo, transport, names)
    ledger = state.ledger
    poisson = uses_dp(cfg, algo)  # DP: secret Poisson sampling, the sampling its accountant assumes
    schedule = {
        r: algo.training_groups(sample_clients(names, cfg.fed.client_fraction, cfg.seed, r, poisson), names)
        for r in range(state.first_round, cfg.fed.rounds + 1)
    }
    transport.begin(schedule)
    global_state = state.global_state
    log = MetricsLog(work / "metrics.jsonl", Tracker(cfg.tracking, work, out_dir.name, flat_keys(cfg)))
    try:
        for r, groups in schedule.items():
            global_state = run_round(cfg, algo, transport, r, groups, global_state, ledger, log)
            if cfg.eval.every and r % cfg.eval.every == 0 and r < cfg.fed.rounds:
                ledger.rounds.append(evaluate_round(cfg, algo, transport, plan, r, global_state, log))
            ledger.transport = transport.meta()
            save_checkpoint(work / "checkpoint", r, global_state, transport.client_states(), ledger.to_json())
        eval_start = time.perf_counter()
        scored_plan, scores = transport.evaluate(plan, eval_kinds(cfg, algo), global_state)
        last = round_entry(cfg, cfg.fed.rounds, scored_plan, scores)
        for line in round_lines(last):
            log.write(line)
    finally:
        log.close()
    timing = {
        "wall_seconds": time.perf_counter() - start,
        "setup_seconds": transport.setup_seconds,
        "train_seconds": ledger.train_seconds,
        "eval_seconds": time.perf_counter() - eval_start,
    }
    extra = {"failures": [f.line() for f in ledger.failures + list(transport.eval_failures)],
             "rounds": ledger.rounds + [last], **dp_results(cfg, ledger), **transport.extra_results()}
    ranks = {c: transport.rank_of(c) for c in names}
    results = build_results(cfg, scored_plan, scores, communication(cfg, global_state, ledger, ranks), timing, extra)
    publish(out_dir, work, cfg, results, lambda folder: transport.write_adapters(folder, global_state), render)
    return results


def uses_dp(cfg: RunConfig, algo: Algorithm) -> bool:
    return cfg.dp.noise_multiplier > 0 and algo.federated


def dp_results(cfg: RunConfig, ledger: RunLedger) -> dict[str, Any]:
    if cfg.dp.noise_multiplier == 0:
        return {}
    dp, q = cfg.dp, cfg.fed.client_fraction
    eps = ledger.dp_epsilon
    most = max(ledger.dp_participation.values(), default=0)
    return {"dp": {"noise_multiplier": dp.noise_multiplier, "clip_norm": dp.clip_norm, "delta": dp.delta,
                   "sampling_rate": q, "sampling": "Poisson (each client with probability sampling_rate), drawn "
                   "from the OS's cryptographic source", "expected_clients": q * len(ledger.clients),
                   "noise": "Gaussian, std noise_multiplier * clip_norm on the sum of clipped changes, from "
                   "os.urandom; the sum is divided by expected_clients",
                   "epsilon_per_round": eps, "epsilon": eps[-1] if eps else None,
                   # for whoever reads the participation logs (metrics.jsonl, audit.jsonl, updates_per_round):
                   # no amplification by sampling, only the rounds a client took part in
                   "epsilon_if_participation_known": epsilon(dp.noise_multiplier, 1.0, most, dp.delta),
                   "accountant": "dp-accounting RDP, add-or-remove-one client: Poisson-sampled Gaussian "
                   "mechanism, composed over rounds",
                   "protects": "the global adapter and everything computed from it, per client (user-level)"}}


def refuse_another_runs_results(out_dir: Path, cfg: RunConfig) -> None:
    """Stop (exit 2) when ``out_dir`` holds the finished results of a run made with another config:
    they are that run's, ``--fresh`` or not. Called under the folder's lock, before anything is written."""
    if not ((out_dir / "results.json").is_file() and (out_dir / "config.toml").is_file()):
        return  # no finished run here (a run publishes both)
    try:
        stored = tomllib.loads((out_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        stored = None  # an unreadable config: whose results they are is unknown, so not ours
    changed = changed_keys(stored, cfg.to_dict(), RunConfig().to_dict())
    if changed:
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        raise FedoaError(f"holds the finished results of another run (other values of {shown}); use another "
                         "--out, or pass --replace to replace them", where=str(out_dir))


def writable(folder: Path) -> None:
    """Fail before round 1, not after hours of training, when results could not be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / ".fedoa-write-test", "")
        (folder / ".fedoa-write-test").unlink()
    except OSError as e:
        raise FedoaError(f"cannot write to the output folder: {e.strerror or e}", where=str(folder)) from None


class MetricsLog:
    """``metrics.jsonl`` and the experiment trackers, fed together; ``audit.jsonl`` beside them."""

    def __init__(self, path: Path, tracker: Tracker):
        self.file, self.tracker = path.open("a", encoding="utf-8"), tracker
        self.audit_file = (path.parent / "audit.jsonl").open("a", encoding="utf-8")

    def write(self, line: dict[str, Any]) -> None:
        self.file.write(json.dumps(line) + "\n")
        self.tracker.log(line)

    def audit(self, line: dict[str, Any]) -> None:
        self.audit_file.write(json.dumps(line) + "\n")

    def flush(self) -> None:
        self.file.flush()
        self.audit_file.flush()

    def close(self) -> None:
        self.file.close()
        self.audit_file.close()
        self.tracker.close()


def evaluate_round(cfg: RunConfig, algo: Algorithm, transport: Transport, plan: EvalPlan, r: int,
                   global_state: AdapterState, log: MetricsLog) -> dict[str, Any]:
    """A cheap look between rounds: personal and global models on the first records of ID and OOD."""
    kinds = [k for k in eval_kinds(cfg, algo) if k in (PERSONAL, GLOBAL)]
    scored, scores = transport.evaluate(plan.limited(cfg.eval.round_records), kinds, global_state)
    entry = round_entry(cfg, r, scored, scores)
    for line in round_lines(entry):
        log.write(line)
    log.flush()
    return entry


def round_entry(cfg: RunConfig, r: int, plan: EvalPlan, scores: Scores) -> dict[str, Any]:
    """``{round, records, summary, per_client}`` of one evaluation (accuracies in [0, 1], None unknown)."""
    mats = matrices(scores, "generation" if cfg.eval.metric == "generation" else "options")
    return clean({"round": r, "records": plan.limit or None,
                  "summary": {k: summarize(m, plan) for k, m in mats.items()},
                  "per_client": {k: per_client(m, plan) for k, m in mats.items()}})


def round_lines(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics lines of an evaluation: one per model kind and client."""
    return [{"round": entry["round"], "client": c, "phase": "eval", "kind": kind,
             **({"records": entry["records"]} if entry["records"] else {}), **row}
            for kind, rows in entry["per_client"].items() for c, row in rows.items()]


def run_round(cfg: RunConfig, algo: Algorithm, transport: Transport, r: int, groups: dict[str, list[str]],
              global_state: AdapterState, ledger: RunLedger, log: MetricsLog) -> AdapterState:
    """One round: dispatch, collect, validate, aggregate (with DP noise when asked); the metrics,
    audit and accounting of the round."""
    t0 = time.perf_counter()
    replies = transport.train(r, groups, global_state)
    updates = []
    for trainer in groups:
        reply = replies.get(trainer, Failure("no reply"))
        if isinstance(reply, Failure):
            if NON_FINITE in reply.reason:  # a diverged client poisons nothing: the run stops
                raise RoundError(f"round {r}: client {trainer!r}: {reply.reason}")
            fail(ledger, transport, r, trainer, "train", reply.reason, reply.node)
            continue
        updates.append(reply)
    declared = {t: sum(transport.examples_of(m) for m in members) for t, members in groups.items()}
    received = {t: narrow(global_state, transport.rank_of(t)) for t in groups}  # what each was sent
    sent_up = {u.client: upload_bytes(u) for u in updates}  # as they came, before decoding
    private = uses_dp(cfg, algo)
    if private:  # each verdict depends on its own upload only; the clipped sum is what DP releases
        total, verdicts = dp_sum(updates, global_state, declared, cfg.trust, cfg.dp.clip_norm, received,
                                 cfg.fed.upload)
        for t in groups:
            ledger.dp_participation[t] = ledger.dp_participation.get(t, 0) + 1
    else:
        verdicts = validate(updates, global_state, declared, cfg.trust, history=ledger.accepted_norms,
                            references=received, fmt=cfg.fed.upload)
    for v in verdicts:
        if not v.accepted:
            fail(ledger, transport, r, v.client, "validation", f"update rejected: {v.reason}")
    accepted = [u for u, v in zip(updates, verdicts) if v.accepted]
    need = min(cfg.fed.min_clients, len(groups))
    # under DP a rejected update is a zero update: whether the round goes on may not depend on the
    # content of anybody's upload, only on how many nodes answered
    counted = updates if private else accepted
    if len(counted) < need:
        raise RoundError(
            f"round {r}: {len(counted)} of {len(groups)} sampled clients sent a "
            f"{'' if private else 'valid '}update, fewer than "
            f"fed.min_clients = {cfg.fed.min_clients}; the run stops here and resumes from round {r} when "
            "started again"
        )
    for u, v in zip(updates, verdicts):
        for ph in u.phases:
            log.write(phase_line(r, u.client, ph))
        if sent_up[u.client]:  # the change the client made to the global adapter (and what it sent)
            sent = {"bytes": sent_up[u.client]} if algo.federated else {}
            log.write({"round": r, "client": u.client, "phase": "update", "update_norm": v.norm,
                       "accepted": v.accepted, **sent})
    log.flush()
    if algo.federated:
        ledger.bytes_up += sum(sent_up.values())
        ledger.uploads += sum(1 for b in sent_up.values() if b)
        ledger.bytes_down += sum(state_bytes(received[t]) for t in groups
                                 if not (isinstance(replies.get(t), Failure) and not replies[t].sent))
    for u in accepted:  # an upload below the global rank: zero change above it (HetLoRA padding)
        if u.state is not None:
            u.state = pad_change(u.state, global_state)
    if private:
        new_state, noise_std = aggregate_dp(cfg, algo, total, global_state, r, ledger)
    else:
        new_state, noise_std = algo.aggregate(accepted, global_state, r), 0.0
    for line in algo.server_metrics(r):  # the server's own work (PerAda's distillation)
        log.write({"round": r, "client": "server", **line})
    digest = state_digest(new_state)
    for v in verdicts:
        log.audit(audit_line(r, v, cfg.fed.aggregation, noise_std, digest))
    log.flush()
    if not private:  # the history of the derived absolute bound (the last 1,000 accepted norms)
        ledger.accepted_norms = (ledger.accepted_norms + [v.norm for v in verdicts if v.accepted and v.digest])[-1000:]
    transport.round_done(r, accepted)
    ledger.updates_per_round[str(r)] = [u.client for u in accepted]
    ledger.train_seconds += time.perf_counter() - t0
    transport.log(f"[fedoa] round {r}/{cfg.fed.rounds}: aggregated {len(accepted)} update(s) in "
                  f"{time.perf_counter() - t0:.1f} s")
    return new_state


def aggregate_dp(cfg: RunConfig, algo: Algorithm, total: AdapterState, global_state: AdapterState, r: int,
                 ledger: RunLedger) -> tuple[AdapterState, float]:
    """DP-FedAvg: the noised clipped sum over the expected number of sampled clients (q n), then the
    method's own aggregation of that one average (post-processing: e.g. pFedMe's server mix)."""
    dp = cfg.dp
    expected = cfg.fed.client_fraction * len(ledger.clients)
    average, std = dp_release(total, global_state, dp.noise_multiplier, dp.clip_norm, expected)
    ledger.dp_epsilon.append(epsilon(dp.noise_multiplier, cfg.fed.client_fraction, r, dp.delta))
    return algo.aggregate([ClientUpdate("dp-average", average, 1)], global_state, r), std


def fail(ledger: RunLedger, transport: Transport, r: int | str, client: str, phase: str, reason: str,
         node: int | None = None) -> None:
    ledger.fail(r, client, phase, reason, node)
    transport.log(f"[fedoa] round {r}: client {client!r} failed in {phase}: {reason}")


# ---------------------------------------------------------------------------- resume


@dataclass
class RunState:
    first_round: int
    global_state: AdapterState
    ledger: RunLedger


class Resume:
    """The checkpoint of an unfinished run, if it was made with the same config."""

    def __init__(self, cfg: RunConfig, work: Path, restart_on_change: bool):
        self.cfg, self.work, self.restart_on_change = cfg, work, restart_on_change

    def load(self, algo: Algorithm, transport: Transport, names: list[str]) -> RunState:
        found = load_checkpoint(self.work / "checkpoint")
        if found is not None:
            changed = changed_keys(found[3].get("config"), self.cfg.to_dict(), RunConfig().to_dict())
            if not changed:
                return self._continue(found, transport, names)
            if not self.restart_on_change:
                raise ConfigError(
                    f"the unfinished run in {self.work.parent} was made with other values of {', '.join(changed)}; "
                    "rerun with --fresh to start over (or use another --out)", where="config")
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "metrics.jsonl").write_text("", encoding="utf-8")
        (self.work / "audit.jsonl").write_text("", encoding="utf-8")
        transport.restore({n: algo.init_client(transport.am, n) for n in names}, {})
        return RunState(1, algo.init_global(transport.am), RunLedger(self.cfg.to_dict(), names))

    def _continue(self, found, transport: Transport, names: list[str]) -> RunState:
        done, global_state, client_states, meta = found
        ledger = RunLedger.from_json(meta)
        if ledger.clients != names:
            raise ConfigError(
                f"the checkpoint in {self.work} was made with clients {ledger.clients}, this run has "
                f"{names}: bring the same clients back, or rerun with --fresh", where="clients")
        transport.restore(client_states, ledger.transport)
        truncate_metrics(self.work / "metrics.jsonl", done + 1)
        truncate_metrics(self.work / "audit.jsonl", done + 1)
        transport.log(f"[fedoa] resuming from the checkpoint after round {done}")
        return RunState(done + 1, global_state, ledger)


def truncate_metrics(path: Path, first_round: int) -> None:
    """Drop metric lines of rounds that will be re-run (a crash may have left some)."""
    if not path.exists():
        return
    keep = [line for line in read_jsonl(path, torn_tail=True)  # a line cut by a kill is dropped
            if isinstance(line, dict) and isinstance(line.get("round"), int) and line["round"] < first_round]
    write_text(path, "".join(json.dumps(line) + "\n" for line in keep))


# ---------------------------------------------------------------------------- outputs


def communication(cfg: RunConfig, global_state: AdapterState, ledger: RunLedger, ranks: dict[str, int]
                  ) -> dict[str, Any]:
    rounds = cfg.fed.rounds
    return {
        "rounds": rounds,
        "adapter_bytes": state_bytes(global_state),
        "bytes_up_per_round": ledger.bytes_up / rounds,
        "bytes_down_per_round": ledger.bytes_down / rounds,
        "bytes_up_total": ledger.bytes_up,
        "bytes_down_total": ledger.bytes_down,
        "upload_format": cfg.fed.upload,
        # one client's upload in one round, as it travelled (compressed, at its rank)
        "bytes_up_per_client_round": ledger.bytes_up / ledger.uploads if ledger.uploads else 0.0,
        # each client's LoRA rank where they differ (heterogeneous ranks)
        "client_ranks": ranks if any(r != cfg.lora.r for r in ranks.values()) else {},
        "updates_per_round": ledger.updates_per_round,
    }


def publish(out_dir: Path, work: Path, cfg: RunConfig, results: Results,
            write_adapters: Callable[[Path], None], render: Renderer | None = None) -> None:
    """Write the final artifacts into ``work/final``, move each into ``out_dir``, drop ``work``."""
    final = work / "final"
    if final.exists():
        shutil.rmtree(final)
    final.mkdir(parents=True)
    write_text(final / "config.toml", config_to_toml(cfg))
    results.save(final / "results.json")
    shutil.copy(work / "metrics.jsonl", final / "metrics.jsonl")
    if (work / "audit.jsonl").exists():
        shutil.copy(work / "audit.jsonl", final / "audit.jsonl")
    if render is not None:
        render(final, results, read_jsonl(work / "metrics.jsonl"))
    if (work / "tensorboard").is_dir():
        shutil.copytree(work / "tensorboard", final / "tensorboard")
    if (work / "mlruns").is_dir():
        shutil.copytree(work / "mlruns", final / "mlruns")
    write_adapters(final / "adapters")
    fsync_tree(final)  # every published file is on disk before anything moves
    for item in sorted(final.iterdir()):
        dest = out_dir / item.name
        if dest.is_dir():
            trash = work / f"old-{item.name}"
            if trash.exists():
                shutil.rmtree(trash)
            dest.replace(trash)
        item.replace(dest)
    fsync_dir(out_dir)  # the moves themselves are durable before the work in progress goes
    shutil.rmtree(work)

