"""The Flower transport: the driver's work sent to one SuperNode per client over Flower messages.

The round loop is the driver's (:mod:`fedoa.runtime.driver`); this module only finds the nodes,
sends each sampled client its training message and decodes the reply, and spreads evaluation
over the nodes. Each node runs the method's own ``client_update`` / ``setup_eval`` on its own
data; personal state stays on the node's disk, and the server only says which round's state a
message continues from (``state-round``), so node and server restarts continue exactly.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedoa.algorithms.base import Algorithm, ClientState, ClientUpdate
from fedoa.config import RunConfig
from fedoa.errors import FedoaError
from fedoa.evaluation.matrix import EvalPlan, SetScores, evaluate_models
from fedoa.evaluation.protocols import plan_from_reports
from fedoa.model.adapters import AdapterState
from fedoa.model.uploads import narrow
from fedoa.paths import cache_dir
from fedoa.runtime.common import model_identity
from fedoa.runtime.driver import Failure, Scores, Transport
from fedoa.runtime.flower import replies, wire
from fedoa.runtime.flower.runconfig import DeploySettings
from fedoa.runtime.ledger import FailureEntry

NODE_UNAVAILABLE = 5  # flwr.common.constant.ErrorCode.NODE_UNAVAILABLE


class DeployError(FedoaError):
    """The federation cannot go on (too few nodes, inconsistent data, missing test sets)."""


def output_root() -> Path:
    """The only folder a deployment's server writes under: ``$FEDOA_OUTPUT_ROOT`` (set by
    ``fedoa deploy superlink --output-root``), else ``<fedoa cache>/deployments``."""
    root = os.environ.get("FEDOA_OUTPUT_ROOT")
    return Path(root).expanduser().resolve() if root else cache_dir() / "deployments"


def confined(out_dir: str) -> Path:
    """``out_dir`` under the output root; a path that leaves it is refused (whoever submits a run
    does not choose where the SuperLink's machine writes)."""
    root = output_root()
    target = (root / out_dir).resolve()
    if target != root and root not in target.parents:
        raise DeployError(f"deploy.out-dir {out_dir!r} leaves the server's output root {root}")
    return target


def run_key(cfg: RunConfig, out_dir: Path) -> str:
    """Names the nodes' state folders: the same run (config + out-dir) finds its state again."""
    return hashlib.sha256(f"{json.dumps(cfg.to_dict(), sort_keys=True)}\n{out_dir}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- messaging


class Exchange:
    """Send one message per node, collect the replies (or failures), with an optional timeout.

    Not Flower's ``Grid.send_and_receive`` (checked in flwr 1.42): it sleeps a fixed 3 s between
    pulls (``deploy.poll-interval`` here: 1 s by default, 0 in tests), which would add up to 3 s to
    every message exchange, and it returns bare replies, while a round needs each node's outcome:
    its content, a push the SuperLink refused, an error reply (a vanished node), or a timeout."""

    def __init__(self, grid, poll_interval: float):
        self.grid, self.poll = grid, poll_interval
        #: one entry per exchange: its type, group (round), nodes and wall seconds (results.json)
        self.timings: list[dict[str, Any]] = []

    def __call__(self, msg_type: str, contents: dict[int, Any], group: str, timeout: float = 0.0) -> dict[int, Any]:
        start = time.perf_counter()
        out = self._exchange(msg_type, contents, group, timeout)
        work = [replies.seconds_of(r) for r in out.values() if not isinstance(r, Failure)]
        self.timings.append({"type": msg_type, "group": group, "nodes": len(contents),
                             "seconds": round(time.perf_counter() - start, 3),
                             "slowest_node_seconds": round(max(work, default=0.0), 3)})
        return out

    def _exchange(self, msg_type: str, contents: dict[int, Any], group: str, timeout: float) -> dict[int, Any]:
        from flwr.app import Message

        nodes = list(contents)
        ids = list(self.grid.push_messages([Message(contents[n], n, msg_type, group_id=group) for n in nodes]))
        out: dict[int, Any] = {}
        pending: dict[str, int] = {}
        for n, mid in zip(nodes, ids):
            if mid:
                pending[mid] = n
            else:
                out[n] = Failure("the SuperLink did not accept the message", sent=False, node=n)
        deadline = time.monotonic() + timeout if timeout > 0 else None
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                n = pending.pop(reply.metadata.reply_to_message_id, None)
                if n is None:
                    continue
                if reply.has_error():
                    code, reason = _error_of(reply)
                    out[n] = Failure(f"{reason} (error code {code})", lost=code == NODE_UNAVAILABLE, node=n)
                else:
                    out[n] = reply.content
            if not pending:
                break
            if deadline is not None and time.monotonic() >= deadline:
                for n in pending.values():  # maybe only slow: it is asked again next time
                    out[n] = Failure(f"no reply within {timeout:g} s", node=n)
                break
            time.sleep(self.poll)
        return out


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


def _error_of(reply) -> tuple[int, str]:
    """The code and reason of an error reply, whatever a node put there."""
    try:
        code = int(reply.error.code)
    except Exception:  # noqa: BLE001
        code = -1
    try:
        reason = str(reply.error.reason)[:500]
    except Exception:  # noqa: BLE001
        reason = "an unreadable error"
    return code, reason


# ---------------------------------------------------------------------------- the transport


class FlowerTransport(Transport):
    def __init__(self, grid, cfg: RunConfig, st: DeploySettings, log=print):
        from fedoa.runtime.session import build_model

        start = time.perf_counter()
        self.grid, self.cfg, self.st, self._log = grid, cfg, st, log
        self.exchange = Exchange(grid, st.poll_interval)
        self.fed = Federation()
        self.out_dir = confined(st.out_dir)
        self.run_key = run_key(cfg, self.out_dir)
        self.client_rounds: dict[str, int] = {}
        self.declared: dict[str, int] = {}  # training examples per client, as first declared
        self.ranks: dict[str, int] = {}  # LoRA rank per client, as first declared
        self.refused: list[dict[str, Any]] = []  # nodes that claimed a client bound to another node
        self.am, _ = build_model(cfg)  # adapter shapes (init) and the global adapter's export
        self.setup_seconds = time.perf_counter() - start

    def log(self, message: str) -> None:
        self._log(message)

    # -------------------------------------------------------------- nodes

    def open(self, algo: Algorithm) -> list[str]:
        start = time.perf_counter()
        self.algo = algo
        if self.cfg.eval.rouge and not self.st.record_outcomes:
            raise DeployError("eval.rouge on Flower needs per-record outcomes from the nodes: set "
                              "deploy.record-outcomes = true (fedoa deploy run --record-outcomes) to opt in")
        if algo.needs_server_model():
            raise DeployError(f"method {self.cfg.method!r} runs the model on server-side data in its aggregation, "
                              "which the Flower server does not do; see docs/deployment.md")
        self.wait_for_nodes()
        names = sorted(self.fed.node_of)
        if any(algo.training_groups([n], names) != {n: [n]} for n in names):
            raise DeployError(f"method {self.cfg.method!r} trains on several clients' pooled data, which cannot "
                              "leave their nodes: run it in-process (fedoa run)")
        self.plan = plan_from_reports(self.cfg, {c: self.fed.reports[c] for c in names})
        self.setup_seconds += time.perf_counter() - start
        return names

    def discover(self, expected: set[str] | None = None) -> None:
        """Ask nodes not seen before who they are; map them to client names.

        With ``deploy.node-auth`` a node id is its registered key and a client name stays bound to
        the first node that claimed it (the first to answer when two join in the same poll): any
        other node claiming it is refused and recorded, at the start or later, and the first node
        goes on. Without node authentication two nodes with one name at the start are an error
        (a misconfiguration), and during the run a new node of a known client is taken to be its
        restart and replaces the old node.
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
        for n, rep in self.exchange(wire.QUERY, {n: wire.content({}) for n in ids}, "hello", self.st.round_timeout).items():
            if isinstance(rep, Failure):
                if expected is None and not rep.lost:  # a misconfigured node: say so now, not at join-timeout
                    raise DeployError(f"node {n} cannot serve a client: {rep.reason}")
                self.log(f"[fedoa] node {n} did not say who it is: {rep.reason}")
                if rep.lost:
                    self.fed.lost.add(n)
                continue
            parsed = replies.parse(wire.QUERY, rep, max_rank=self.cfg.lora.r)
            if isinstance(parsed, replies.BadReply):
                self.refused.append({"node": n, "reason": f"malformed hello: {parsed}"})
                self.log(f"[fedoa] node {n} sent a malformed hello ({parsed}); ignored")
                continue
            report = parsed.as_dict()
            c = report["client"]
            if expected is not None and c not in expected:
                self.log(f"[fedoa] node {n} serves client {c!r}, which is not in this run; ignored")
                continue
            old = self.fed.node_of.get(c)
            if old is not None and old != n:
                if self.st.node_auth:  # a node id is its registered key: the name stays with the first one
                    self.refused.append({"node": n, "client": c, "bound_to": old})
                    self.log(f"[fedoa] node {n} claims client {c!r}, bound to node {old} (its key): refused")
                    continue
                if expected is None and old not in self.fed.lost:
                    raise DeployError(f"two nodes ({old} and {n}) say they are client {c!r}: client-name must be unique")
                self.log(f"[fedoa] client {c!r} is back on node {n} (was node {old})")
                self.fed.lost.add(old)
            self.fed.node_of[c] = n
            self.fed.reports[c] = report
            # the example count a client declared when it first joined caps every later claim: a node
            # that comes back may declare fewer, never more
            self.declared[c] = min(self.declared.get(c, report["train"]), report["train"])
            if self.ranks.setdefault(c, report["rank"]) != report["rank"]:  # its uploads will fail validation
                self.log(f"[fedoa] client {c!r} now declares rank {report['rank']}; it joined with rank "
                         f"{self.ranks[c]}, which its uploads must have")

    def wait_for_nodes(self) -> None:
        deadline = time.monotonic() + self.st.join_timeout
        while True:
            self.discover()
            if len(self.fed.node_of) >= self.st.num_nodes:
                break
            if time.monotonic() >= deadline:
                raise DeployError(f"{len(self.fed.node_of)} of {self.st.num_nodes} nodes joined within "
                                  f"{self.st.join_timeout:g} s (clients: {sorted(self.fed.node_of)})")
            time.sleep(self.st.poll_interval)
        self.log(f"[fedoa] {len(self.fed.node_of)} clients: " + ", ".join(
            f"{c} (node {n})" for c, n in sorted(self.fed.node_of.items())))

    def eval_plan(self) -> EvalPlan:
        return self.plan

    def examples_of(self, client: str) -> int:
        return self.declared[client]

    def rank_of(self, client: str) -> int:
        return self.ranks.get(client, self.cfg.lora.r)

    # -------------------------------------------------------------- training

    def train(self, round_: int, groups: dict[str, list[str]], global_state: AdapterState) -> dict[str, ClientUpdate | Failure]:
        self.discover(expected=set(self.fed.node_of))
        out: dict[str, ClientUpdate | Failure] = {}
        contents, client_of = {}, {}
        for c in groups:
            n = self.fed.alive(c)
            if n is None:
                out[c] = Failure("the node is unavailable", sent=False, node=self.fed.node_of.get(c))
                continue
            client_of[n] = c
            contents[n] = wire.content({"round": round_, "state-round": self.client_rounds.get(c, 0),
                                        "run-key": self.run_key}, narrow(global_state, self.rank_of(c)))
        self.log(f"[fedoa] round {round_}/{self.cfg.fed.rounds}: training {', '.join(client_of.values()) or 'nobody'}")
        for n, rep in self.exchange(wire.TRAIN, contents, str(round_), self.st.round_timeout).items():
            c = client_of[n]
            if isinstance(rep, Failure):
                if rep.lost:
                    self.fed.lost.add(n)
                out[c] = rep
                continue
            parsed = replies.parse(wire.TRAIN, rep, client=c, round=round_,
                                   reference=narrow(global_state, self.rank_of(c)), upload=self.cfg.fed.upload)
            out[c] = Failure(f"malformed reply: {parsed}", node=n) if isinstance(parsed, replies.BadReply) else parsed
        return out

    def round_done(self, round_: int, updates: list[ClientUpdate]) -> None:
        for u in updates:
            self.client_rounds[u.client] = round_

    def client_states(self) -> dict[str, ClientState]:
        return {}  # on the nodes

    def meta(self) -> dict[str, Any]:
        return {"client_rounds": dict(self.client_rounds), "run_key": self.run_key, "declared": dict(self.declared),
                "ranks": dict(self.ranks)}

    def restore(self, client_states: dict[str, ClientState], meta: dict[str, Any]) -> None:
        self.client_rounds = dict(meta.get("client_rounds", {}))
        for c, n in meta.get("declared", {}).items():  # a resumed run keeps the first declarations
            self.declared[c] = min(n, self.declared.get(c, n))
        self.ranks.update(meta.get("ranks", {}))

    # -------------------------------------------------------------- evaluation

    def _assign(self, plan: EvalPlan, kinds: list[str], rows: list[str], done: dict) -> dict[str, list[tuple[str, str]]]:
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

    def evaluate(self, plan: EvalPlan, kinds: list[str], global_state: AdapterState) -> tuple[EvalPlan, Scores]:
        self.discover(expected=set(plan.clients))
        rows = [c for c in plan.clients if self.fed.alive(c) is not None]
        self.eval_failures = [FailureEntry("eval", c, "evaluate", "the node is unavailable; its models are not evaluated",
                                           self.fed.node_of.get(c)) for c in plan.clients if c not in rows]
        done: dict[tuple[str, str], SetScores] = {}
        for _ in range(2):  # a node lost during evaluation: its shared work goes to another node
            work = {c: pairs for c, pairs in self._assign(plan, kinds, rows, done).items() if pairs}
            if not work:
                break
            contents, client_of = {}, {}
            for c, pairs in work.items():
                n = self.fed.alive(c)
                client_of[n] = c
                contents[n] = wire.content({"round": self.cfg.fed.rounds, "state-round": self.client_rounds.get(c, 0),
                                            "run-key": self.run_key, "pairs": [list(p) for p in pairs],
                                            "limit": plan.limit, "records": self.st.record_outcomes}, global_state)
            self.log(f"[fedoa] evaluating on {len(contents)} node(s): "
                     + ", ".join(f"{c} {len(p)} model x set" for c, p in work.items()))
            sizes = {s: len(plan.sets[s][:plan.limit or None]) for s in plan.sets}
            for n, rep in self.exchange(wire.EVALUATE, contents, "eval", self.st.eval_timeout).items():
                c = client_of[n]
                if not isinstance(rep, Failure):
                    parsed = replies.parse(wire.EVALUATE, rep, client=c, pairs=work[c], sizes=sizes,
                                           records=self.st.record_outcomes)
                    rep = Failure(f"malformed reply: {parsed}", node=n) if isinstance(parsed, replies.BadReply) else parsed
                if isinstance(rep, Failure):
                    self.log(f"[fedoa] evaluation on client {c!r} (node {n}) failed: {rep.reason}")
                    if rep.lost:
                        self.fed.lost.add(n)
                    rows.remove(c)
                    self.eval_failures.append(FailureEntry("eval", c, "evaluate", rep.reason, n))
                    continue
                for r in rep:  # only the (model, set) pairs this node was asked to score
                    done[(model_identity(self.algo, r.kind, c), r.set)] = SetScores(
                        r.options, r.generation, r.options_hits, r.generation_hits, r.rouge or {})
        rows = [c for c in rows if all((model_identity(self.algo, k, c), s) in done for k in kinds for s in plan.sets_of(c))]
        if not rows:
            raise DeployError("no client's models could be evaluated")
        final = plan.only(rows)
        replay = Replay(done)

        def activate(kind: str, client: str) -> None:
            replay.ident = model_identity(self.algo, kind, client)

        return final, evaluate_models(replay, final, kinds, lambda k, c: model_identity(self.algo, k, c), activate)

    def write_adapters(self, folder: Path, global_state: AdapterState) -> None:
        exported = self.algo.exported_adapters({}, global_state)
        if "global" in exported:
            self.am.save(exported["global"], folder / "global")
        folder.mkdir(parents=True, exist_ok=True)  # personal adapters stay on their nodes

    def extra_results(self) -> dict[str, Any]:
        return {"deployment": {
            "engine": "flower-deployment",
            "nodes": {c: self.fed.node_of[c] for c in sorted(self.fed.node_of)},
            "clients_not_evaluated": sorted({f.client for f in self.eval_failures}),
            "eval_path": self.st.eval_path, "node_auth": self.st.node_auth, "refused": self.refused,
            # per-record outcomes of the nodes' test sets travel only with this opt-in
            "record_outcomes": self.st.record_outcomes,
            "run_key": self.run_key,
            # every message exchange: wall seconds, and the slowest node's own work in it
            # (the difference is messaging overhead: Flower's polling, process start-up)
            "exchanges": self.exchange.timings,
        }}


class Replay:
    """An evaluator stand-in that returns the scores the nodes sent, for ``evaluate_models``."""

    def __init__(self, done: dict[tuple[str, str], SetScores]):
        self.done, self.ident, self.prepared = done, "", {}

    def score(self, set_name: str, fingerprint: str | None = None, limit: int | None = None) -> SetScores:
        return self.done[(self.ident, set_name)]  # the nodes already scored the limited sets
