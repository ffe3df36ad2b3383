"""The server side of the Flower app: rounds, aggregation, checkpoints, evaluation, reports.

It drives the same method code as the in-process runtime: the server samples clients with
:func:`fedoa.runtime.sampling.sample_clients`, each sampled node runs ``Algorithm.client_update``
on its own data, and the server combines the uploads with ``Algorithm.aggregate``. With the same
seed, data and config the final global adapter equals ``fedoa run``'s (up to float rounding of
different thread counts).

Run config (``[tool.flwr.app.config]`` of the app, written by ``fedoa deploy``):

- ``fedoa-config``: the resolved fedoa config as TOML text (every node parses the same text);
- ``out-dir``: where the results go, on the SuperLink's machine (absolute path);
- ``num-nodes``: clients (distinct ``client-name``\\ s) to wait for before round 1;
- ``min-nodes``: updates a round needs to be aggregated (at most the sampled count); fewer
  fail the run, which then resumes from the last checkpoint when started again;
- ``eval-path``: the shared test sets every node reads for OOD evaluation ("" = ID only);
- ``round-timeout``: seconds to wait for a round's replies (0 = until every node has replied
  or Flower reports it unavailable, ~30-60 s after it died);
- ``eval-timeout``: the same for the final evaluation (0 = wait);
- ``join-timeout``: seconds to wait for ``num-nodes`` clients at the start;
- ``fresh``: ignore an unfinished run's checkpoint in ``out-dir``.

Work in progress lives in ``out-dir/.run`` (metrics + a checkpoint per round with the global
adapter and the round each client's private state is at), exactly like ``fedoa run``; the
artifacts are moved into ``out-dir`` at the end.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedoa.algorithms.base import ClientUpdate, Phase
from fedoa.checkpoint import load_checkpoint, save_checkpoint
from fedoa.config import RunConfig
from fedoa.data.records import ClientData, Record
from fedoa.errors import FedoaError
from fedoa.evaluation.matrix import EvalPlan, SetScores, default_plan, evaluate_models
from fedoa.model.adapters import state_bytes
from fedoa.reports.results import build_results
from fedoa.runtime.common import (
    WORK,
    communication_summary,
    config_key,
    eval_kinds,
    metric_line,
    model_identity,
    publish,
    truncate_metrics,
)
from fedoa.runtime.flower import wire
from fedoa.runtime.sampling import sample_clients

NODE_UNAVAILABLE = 5  # flwr.common.constant.ErrorCode.NODE_UNAVAILABLE


class DeployError(FedoaError):
    """The federation cannot go on (too few nodes, inconsistent data, missing test sets)."""


# ---------------------------------------------------------------------------- settings


@dataclass
class ServerSettings:
    cfg: RunConfig
    out_dir: Path
    num_nodes: int
    min_nodes: int = 1
    eval_path: str = ""
    round_timeout: float = 0.0
    eval_timeout: float = 0.0
    join_timeout: float = 600.0
    fresh: bool = False
    poll_interval: float = 1.0

    @classmethod
    def from_run_config(cls, rc: Mapping[str, Any]) -> "ServerSettings":
        from fedoa.runtime.flower.node import config_from_text

        def need(key: str, tp: type):
            if key not in rc:
                raise DeployError(f"the run config has no {key!r} (was the app made by `fedoa deploy`?)")
            v = rc[key]
            if tp is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, tp) or (tp is int and isinstance(v, bool)):
                raise DeployError(f"run config {key!r} must be a {tp.__name__}, got {v!r}")
            return v

        out = Path(need("out-dir", str))
        if not out.is_absolute():
            raise DeployError(f"out-dir must be an absolute path on the SuperLink's machine, got {str(out)!r}")
        st = cls(
            cfg=config_from_text(need("fedoa-config", str)),
            out_dir=out,
            num_nodes=need("num-nodes", int),
            min_nodes=need("min-nodes", int),
            eval_path=need("eval-path", str),
            round_timeout=need("round-timeout", float),
            eval_timeout=need("eval-timeout", float),
            join_timeout=need("join-timeout", float),
            fresh=need("fresh", bool),
        )
        if "poll-interval" in rc:
            st.poll_interval = need("poll-interval", float)
        if st.num_nodes < 1 or st.min_nodes < 1:
            raise DeployError("num-nodes and min-nodes must be >= 1")
        return st


def run_key(cfg: RunConfig, out_dir: Path) -> str:
    """Names the nodes' state folders: the same run (config + out-dir) finds its state again."""
    return hashlib.sha256(f"{config_key(cfg)}\n{out_dir}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- messaging


@dataclass
class Failure:
    reason: str
    lost: bool  # Flower reports the node gone (not just its app failing, or slow)


class Exchange:
    """Send one message per node, collect the replies (or failures), with an optional timeout."""

    def __init__(self, grid, poll_interval: float, log: Callable[[str], None]):
        self.grid, self.poll, self.log = grid, poll_interval, log

    def __call__(
        self, msg_type: str, contents: dict[int, Any], group: str, timeout: float = 0.0
    ) -> dict[int, Any | Failure]:
        from flwr.app import Message

        nodes = list(contents)
        if not nodes:
            return {}
        messages = [Message(contents[n], n, msg_type, group_id=group) for n in nodes]
        ids = list(self.grid.push_messages(messages))
        out: dict[int, Any | Failure] = {}
        pending: dict[str, int] = {}
        for n, mid in zip(nodes, ids):
            if mid:
                pending[mid] = n
            else:
                out[n] = Failure("the SuperLink did not accept the message", lost=False)
        deadline = time.monotonic() + timeout if timeout > 0 else None
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                n = pending.pop(reply.metadata.reply_to_message_id, None)
                if n is None:
                    continue
                if reply.has_error():
                    code = int(reply.error.code)
                    out[n] = Failure(f"{reply.error.reason} (error code {code})", lost=code == NODE_UNAVAILABLE)
                else:
                    out[n] = reply.content
            if not pending:
                break
            if deadline is not None and time.monotonic() >= deadline:
                for n in pending.values():  # maybe only slow: it is asked again next time
                    out[n] = Failure(f"no reply within {timeout:g} s", lost=False)
                break
            time.sleep(self.poll)
        return out


# ---------------------------------------------------------------------------- federation


@dataclass
class Federation:
    """Which node serves which client, and what each node reported about its data."""

    node_of: dict[str, int] = field(default_factory=dict)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    known: set[int] = field(default_factory=set)  # nodes already asked who they are
    lost: set[int] = field(default_factory=set)

    def alive(self, client: str) -> int | None:
        n = self.node_of.get(client)
        return None if n is None or n in self.lost else n


def _decode_report(values: dict[str, Any]) -> dict[str, Any]:
    return {
        "client": values["client"],
        "train": int(values["train"]),
        "train-pairs": json.loads(values["train-pairs"]),
        "test": json.loads(values["test"]),
        "sets": json.loads(values["sets"]),
    }


# ---------------------------------------------------------------------------- the plan


def _stand_ins(pairs: list[list[str]], size: int) -> list[Record]:
    """Records that stand for a test set the server never sees: right size, tasks, categories."""
    recs = [Record("", "", (), task, category) for task, category in pairs] or [Record("", "")]
    return [recs[i % len(recs)] for i in range(size)]


def deployment_plan(cfg: RunConfig, reports: dict[str, dict[str, Any]]) -> EvalPlan:
    """The run's :class:`EvalPlan`, built by the protocol's own plan builder from what the nodes
    reported (sizes, tasks, categories): the same plan ``fedoa run`` makes from the same data.

    A client's ID set is its node's own test data; every other set must be readable by the
    node (from its eval-path). Without any eval-path on any node only ID is evaluated.
    """
    names = sorted(reports)
    sizes: dict[str, int] = {}
    pairs: dict[str, list[list[str]]] = {}

    def note(name: str, desc: dict[str, Any], who: str) -> None:
        if name in sizes and sizes[name] != desc["size"]:
            raise DeployError(
                f"test set {name!r} has {sizes[name]} records on one node but {desc['size']} on "
                f"{who!r}: every node must read the same shared test files"
            )
        sizes[name] = desc["size"]
        pairs.setdefault(name, desc["pairs"])

    for c in names:
        note(c, reports[c]["test"], c)
    for c in names:
        for name, desc in reports[c]["sets"].items():
            note(name, desc, c)
    clients = [
        ClientData(c, _stand_ins(reports[c]["train-pairs"], len(reports[c]["train-pairs"])), _stand_ins(pairs[c], sizes[c]))
        for c in names
    ]
    any_shared = any(reports[c]["sets"] for c in names)
    ood = cfg.eval.ood and any_shared
    name = cfg.protocol.name if hasattr(cfg, "protocol") else "natural"
    if name == "natural":
        plan = default_plan(clients, ood=ood)
    elif name == "within-category":
        from fedoa.evaluation.protocols import within_category_plan

        task_category = {t: (cat or t) for ps in pairs.values() for t, cat in ps}
        for c in clients:
            for r in c.train:
                task_category.setdefault(r.task, r.category or r.task)
        plan = within_category_plan(clients, task_category, ood=ood)
    elif name == "leave-category-out":
        from fedoa.evaluation.protocols import leave_category_out_plan

        holdout = cfg.protocol.holdout
        if not holdout:
            raise DeployError("protocol 'leave-category-out' needs protocol.holdout in a deployment")
        heldout = {
            s: _stand_ins(pairs[s], sizes[s]) for s in sizes
            if s not in reports and {(cat or t) for t, cat in pairs[s]} == {holdout}
        }
        if ood and not heldout:
            raise DeployError(f"no node's eval-path holds a test set of the held-out category {holdout!r}")
        plan = leave_category_out_plan(clients, heldout, holdout, ood=ood)
    else:
        raise DeployError(f"protocol {name!r} is not supported by the deployment")
    if not cfg.eval.extra_ood:
        plan = plan.headline_only()
    if cfg.eval.ood and not any_shared:
        plan.description += " OOD not evaluated: no node has an eval-path with shared test sets."
    for c in plan.clients:
        readable = {c} | set(reports[c]["sets"])
        missing = [s for s in plan.sets_of(c) if s not in readable]
        if missing:
            raise DeployError(
                f"the node of client {c!r} cannot read test set(s) {missing}: give it an eval-path "
                "that holds every client's test file (<category>/<task>_test.jsonl)"
            )
    return plan


def restrict(plan: EvalPlan, rows: list[str]) -> EvalPlan:
    """The plan for the clients in ``rows`` only (the ones whose models could be evaluated)."""
    changes: dict[str, Any] = {
        "id_set": {c: plan.id_set[c] for c in rows},
        "ood_sets": {c: plan.ood_sets.get(c, []) for c in rows},
    }
    if hasattr(plan, "ood_groups"):
        changes["ood_groups"] = {g: {c: v.get(c, []) for c in rows} for g, v in plan.ood_groups.items()}
    return dataclasses.replace(plan, **changes)


class _Replay:
    """An evaluator stand-in that returns the scores the nodes sent, for ``evaluate_models``."""

    def __init__(self, done: dict[tuple[str, str], SetScores]):
        self.done, self.ident, self.prepared = done, "", {}

    def score(self, set_name: str, fingerprint: str | None = None) -> SetScores:
        return self.done[(self.ident, set_name)]


# ---------------------------------------------------------------------------- the server


class Server:
    def __init__(self, grid, st: ServerSettings, log: Callable[[str], None] = print):
        from fedoa.algorithms import make_algorithm

        self.grid, self.st, self.cfg, self.log = grid, st, st.cfg, log
        self.algo = make_algorithm(st.cfg)
        self.exchange = Exchange(grid, st.poll_interval, log)
        self.fed = Federation()
        self.failures: list[dict[str, Any]] = []
        self.run_key = run_key(st.cfg, st.out_dir)

    # -------------------------------------------------------------- nodes

    def _fail(self, round_: int | str, client: str, node: int | None, phase: str, reason: str) -> None:
        self.failures.append({"round": round_, "client": client, "node": node, "phase": phase, "reason": reason})
        where = "evaluation" if round_ == "eval" else f"round {round_}"
        self.log(f"[fedoa] FAILURE in {where}: client {client!r} (node {node}) failed in {phase}: {reason}")

    def discover(self, expected: set[str] | None = None) -> None:
        """Ask nodes not seen before who they are; map them to client names.

        At the start (``expected`` None) two nodes with one client name are an error; during the
        run a new node of a known client is taken to be its restart and replaces the old node.
        """
        online = set(self.grid.get_node_ids())
        for c, n in self.fed.node_of.items():
            if n not in online and n not in self.fed.lost:
                self.log(f"[fedoa] the node of client {c!r} (node {n}) has left the federation")
                self.fed.lost.add(n)
        ids = sorted(n for n in online if n not in self.fed.known)
        if not ids:
            return
        self.fed.known.update(ids)
        replies = self.exchange(wire.QUERY, {n: wire.content({}) for n in ids}, "hello", self.st.round_timeout)
        for n, rep in replies.items():
            if isinstance(rep, Failure):
                if expected is None and not rep.lost:  # a misconfigured node: say so now, not at join-timeout
                    raise DeployError(f"node {n} cannot serve a client: {rep.reason}")
                self.log(f"[fedoa] node {n} did not say who it is: {rep.reason}")
                if rep.lost:
                    self.fed.lost.add(n)
                continue
            report = _decode_report(wire.values_of(rep))
            c = report["client"]
            if expected is not None and c not in expected:
                self.log(f"[fedoa] node {n} serves client {c!r}, which is not in this run; ignored")
                continue
            old = self.fed.node_of.get(c)
            if old is not None and old != n:
                if expected is None and old not in self.fed.lost:
                    raise DeployError(f"two nodes ({old} and {n}) say they are client {c!r}: client-name must be unique")
                self.log(f"[fedoa] client {c!r} is back on node {n} (was node {old})")
                self.fed.lost.add(old)
            self.fed.node_of[c] = n
            self.fed.reports[c] = report

    def wait_for_nodes(self) -> None:
        deadline = time.monotonic() + self.st.join_timeout
        while True:
            self.discover()
            have = len(self.fed.node_of)
            if have >= self.st.num_nodes:
                break
            if time.monotonic() >= deadline:
                raise DeployError(
                    f"{have} of {self.st.num_nodes} nodes joined within {self.st.join_timeout:g} s "
                    f"(clients: {sorted(self.fed.node_of)})"
                )
            time.sleep(self.st.poll_interval)
        self.log(f"[fedoa] {len(self.fed.node_of)} clients: " + ", ".join(
            f"{c} (node {n})" for c, n in sorted(self.fed.node_of.items())))

    # -------------------------------------------------------------- training

    def _decode_update(self, values: dict[str, Any], state) -> ClientUpdate:
        phases = [
            Phase(p["phase"], int(p["steps"]), int(p["examples"]), float(p["seconds"]), dict(p["metrics"]))
            for p in json.loads(values["phases"])
        ]
        return ClientUpdate(values["client"], state, int(values["num-examples"]), phases)

    def train(self, work: Path, am) -> dict[str, Any]:
        cfg, algo = self.cfg, self.algo
        names = sorted(self.fed.node_of)
        key = config_key(cfg)
        resumed = load_checkpoint(work / "checkpoint")
        if resumed is not None and resumed[3].get("config") == key:
            meta = resumed[3]
            if meta.get("clients") != names:
                raise DeployError(
                    f"the checkpoint in {work} was made with clients {meta.get('clients')}, these nodes "
                    f"are {names}: start the same nodes, or run afresh (fresh = true)"
                )
            first_round, global_state = resumed[0] + 1, resumed[1]
            self.failures = list(meta.get("failures", []))
            self.log(f"[fedoa] resuming from the checkpoint after round {resumed[0]}")
        else:
            first_round = 1
            global_state = algo.init_global(am)
            meta = {
                "config": key, "run_key": self.run_key, "clients": names, "bytes_up": 0, "bytes_down": 0,
                "train_seconds": 0.0, "client_rounds": {n: 0 for n in names}, "updates_per_round": {},
                "failures": [],
            }
            (work / "metrics.jsonl").write_text("", encoding="utf-8")
        truncate_metrics(work / "metrics.jsonl", first_round)

        plan = {r: sample_clients(names, cfg.fed.client_fraction, cfg.seed, r) for r in range(1, cfg.fed.rounds + 1)}
        groups = getattr(algo, "training_groups", None)
        for r in plan:
            if groups is not None and groups(plan[r], names) != {n: [n] for n in plan[r]}:
                raise DeployError(
                    f"method {cfg.method!r} trains on several clients' pooled data, which cannot leave "
                    "their nodes: run it in-process (fedoa run)"
                )
        with (work / "metrics.jsonl").open("a", encoding="utf-8") as log:
            for r in range(first_round, cfg.fed.rounds + 1):
                t0 = time.perf_counter()
                self.discover(expected=set(names))
                sampled = plan[r]
                contents: dict[int, Any] = {}
                client_of: dict[int, str] = {}
                for c in sampled:
                    n = self.fed.alive(c)
                    if n is None:
                        self._fail(r, c, self.fed.node_of.get(c), "train", "the node is unavailable")
                        continue
                    client_of[n] = c
                    contents[n] = wire.content(
                        {"round": r, "state-round": meta["client_rounds"][c], "run-key": self.run_key}, global_state
                    )
                self.log(f"[fedoa] round {r}/{cfg.fed.rounds}: training {', '.join(client_of.values()) or 'nobody'}")
                replies = self.exchange(wire.TRAIN, contents, str(r), self.st.round_timeout)
                got: dict[str, ClientUpdate] = {}
                for n, rep in replies.items():
                    c = client_of[n]
                    if isinstance(rep, Failure):
                        self._fail(r, c, n, "train", rep.reason)
                        if rep.lost:
                            self.fed.lost.add(n)
                        continue
                    values = wire.values_of(rep)
                    if values.get("client") != c:
                        self._fail(r, c, n, "train", f"the reply came from client {values.get('client')!r}")
                        continue
                    got[c] = self._decode_update(values, wire.state_of(rep))
                updates = [got[c] for c in sampled if c in got]  # sampled order, like fedoa run
                need = min(self.st.min_nodes, len(sampled))
                if len(updates) < need:
                    raise DeployError(
                        f"round {r}: {len(updates)} of {len(sampled)} sampled clients sent an update, "
                        f"fewer than min-nodes = {self.st.min_nodes}; the run stops here and resumes "
                        "from the last checkpoint when started again"
                    )
                for u in updates:
                    for ph in u.phases:
                        log.write(metric_line(r, u.client, ph))
                log.flush()
                if algo.federated:
                    meta["bytes_up"] += sum(state_bytes(u.state) for u in updates if u.state is not None)
                    meta["bytes_down"] += state_bytes(global_state) * len(contents)
                global_state = algo.aggregate(updates, global_state, r)
                for u in updates:
                    meta["client_rounds"][u.client] = r
                meta["updates_per_round"][str(r)] = [u.client for u in updates]
                meta["train_seconds"] += time.perf_counter() - t0
                meta["failures"] = self.failures
                save_checkpoint(work / "checkpoint", r, global_state, {}, meta)
                self.log(f"[fedoa] round {r} aggregated {len(updates)} update(s) in {time.perf_counter() - t0:.1f} s")
        communication = communication_summary(cfg.fed.rounds, global_state, meta["bytes_up"], meta["bytes_down"], plan)
        communication["updates_per_round"] = meta["updates_per_round"]
        return {"global": global_state, "communication": communication, "meta": meta}

    # -------------------------------------------------------------- evaluation

    def _assign(
        self, plan: EvalPlan, kinds: list[str], rows: list[str], done: dict
    ) -> dict[str, list[tuple[str, str]]]:
        """Who scores which (model, test set): each node its own models; a shared model (the
        global, zero-shot) once per set, preferably by the node whose ID set it is, else by the
        least loaded node that can read the set."""
        readable = {c: {c} | set(self.fed.reports[c]["sets"]) for c in rows}
        load = {c: 0 for c in rows}
        owner: dict[tuple[str, str], str] = {}
        work: dict[str, list[tuple[str, str]]] = {c: [] for c in rows}
        for kind in kinds:
            for c in rows:
                ident = model_identity(self.algo, kind, c)
                for s in plan.sets_of(c):
                    if (ident, s) in done or (ident, s) in owner:
                        continue
                    cands = [d for d in rows if model_identity(self.algo, kind, d) == ident and s in readable[d]]
                    pick = next((d for d in cands if plan.id_set[d] == s), None)
                    if pick is None:
                        pick = min(cands, key=lambda d: (load[d], rows.index(d)))
                    owner[(ident, s)] = pick
                    load[pick] += len(plan.sets[s])
                    work[pick].append((kind, s))
        return work

    def evaluate(self, plan: EvalPlan, global_state, state_rounds: dict[str, int]):
        kinds = eval_kinds(self.cfg, self.algo)
        self.discover(expected=set(plan.clients))
        rows = [c for c in plan.clients if self.fed.alive(c) is not None]
        for c in plan.clients:
            if c not in rows:
                self._fail("eval", c, self.fed.node_of.get(c), "evaluate", "the node is unavailable; its models are not evaluated")
        done: dict[tuple[str, str], SetScores] = {}
        for attempt in range(2):
            work = {c: pairs for c, pairs in self._assign(plan, kinds, rows, done).items() if pairs}
            if not work:
                break
            contents, client_of = {}, {}
            for c, pairs in work.items():
                n = self.fed.alive(c)
                client_of[n] = c
                contents[n] = wire.content(
                    {"round": self.cfg.fed.rounds, "state-round": state_rounds[c], "run-key": self.run_key,
                     "pairs": [list(p) for p in pairs]},
                    global_state,
                )
            self.log(f"[fedoa] evaluating on {len(contents)} node(s): " + ", ".join(
                f"{c} {len(p)} model x set" for c, p in work.items()))
            replies = self.exchange(wire.EVALUATE, contents, "eval", self.st.eval_timeout)
            for n, rep in replies.items():
                c = client_of[n]
                if isinstance(rep, Failure):
                    self._fail("eval", c, n, "evaluate", rep.reason)
                    if rep.lost:
                        self.fed.lost.add(n)
                    rows.remove(c)
                    continue
                for kind, s, opt, gen, opt_hits, gen_hits in json.loads(wire.values_of(rep)["scores"]):
                    done[(model_identity(self.algo, kind, c), s)] = SetScores(_num(opt), _num(gen), opt_hits, gen_hits)
        rows = [
            c for c in rows
            if all((model_identity(self.algo, k, c), s) in done for k in kinds for s in plan.sets_of(c))
        ]
        if not rows:
            raise DeployError("no client's models could be evaluated")
        final_plan = restrict(plan, rows)
        replay = _Replay(done)

        def activate(kind: str, client: str) -> None:
            replay.ident = model_identity(self.algo, kind, client)

        scores = evaluate_models(replay, final_plan, kinds, lambda k, c: model_identity(self.algo, k, c), activate)
        return final_plan, scores


def _num(x) -> float:
    return math.nan if x is None else float(x)


def _failure_lines(failures: list[dict[str, Any]]) -> list[str]:
    out = []
    for f in failures:
        where = f"round {f['round']}" if f["round"] != "eval" else "evaluation"
        out.append(f"{where}: client {f['client']} (node {f['node']}) failed in {f['phase']}: {f['reason']}")
    return out


def run_server(grid, st: ServerSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole run on the server: join, rounds, evaluation, artifacts. Returns results.json."""
    from fedoa.runtime.session import build_model

    start = time.perf_counter()
    cfg = st.cfg
    server = Server(grid, st, log)
    am, _ = build_model(cfg)  # the server needs the adapter shapes (init) and writes the global adapter
    out_dir = st.out_dir
    work = out_dir / WORK
    if st.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    server.wait_for_nodes()
    plan = deployment_plan(cfg, {c: server.fed.reports[c] for c in server.fed.node_of})
    setup_seconds = time.perf_counter() - start

    state = server.train(work, am)
    eval_start = time.perf_counter()
    final_plan, scores = server.evaluate(plan, state["global"], state["meta"]["client_rounds"])
    timing = {
        "wall_seconds": time.perf_counter() - start,
        "setup_seconds": setup_seconds,
        "train_seconds": state["meta"]["train_seconds"],
        "eval_seconds": time.perf_counter() - eval_start,
    }
    failures = server.failures
    extra = {
        "failures": _failure_lines(failures),
        "deployment": {
            "engine": "flower-deployment",
            "nodes": {c: server.fed.node_of[c] for c in sorted(server.fed.node_of)},
            "clients_evaluated": final_plan.clients,
            "clients_not_evaluated": [c for c in plan.clients if c not in final_plan.clients],
            "failures": failures,
            "min_nodes": st.min_nodes,
            "eval_path": st.eval_path,
            "run_key": server.run_key,
        },
    }
    results = build_results(cfg, final_plan, scores, state["communication"], timing, extra=extra)

    def write_adapters(folder: Path) -> None:
        exported = server.algo.exported_adapters({}, state["global"])
        if "global" in exported:
            am.save(exported["global"], folder / "global")
        else:
            folder.mkdir(parents=True, exist_ok=True)

    publish(out_dir, work, cfg, results, write_adapters)
    log(f"[fedoa] done in {timing['wall_seconds']:.0f} s; results in {out_dir / 'results.json'}")
    for kind, s in results["summary"].items():
        log(f"[fedoa] {kind}: ID {s.get('id_accuracy')}, OOD {s.get('ood_accuracy')}")
    return results
