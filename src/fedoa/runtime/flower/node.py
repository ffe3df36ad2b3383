"""The node side of the Flower app: one SuperNode = one client with its own data and state.

A node is configured by its SuperNode's ``--node-config`` (``client-name``, ``data-path`` or
``vader-domain``, optional ``state-dir``, ``eval-path``, ``lora-rank`` and ``model-path``; see docs/deployment.md). Its data is
one client (:func:`fedoa.data.scenario.node_client`); shared test sets come from the eval-path.
State: ``state-dir/<client>/<run-key>/round-NNNN.safetensors`` is the client's private state after
round NNNN; the server says which round's state a message continues from, so node and server
restarts continue exactly. ``.../adapters/personal/`` holds the final personal adapter (PEFT layout).
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedoa.checkpoint import client_file_name, load_client_state, save_client_state
from fedoa.config import RunConfig
from fedoa.data.records import ClientData, Record
from fedoa.data.scenario import node_client, shared_test_sets
from fedoa.errors import FedoaError
from fedoa.paths import cache_dir

NODE_KEYS = ("client-name", "data-path", "vader-domain", "state-dir", "eval-path", "lora-rank", "model-path", "threads")
INT_KEYS = ("lora-rank", "threads")
# keys Flower itself may put into a node's config (simulation); accepted and ignored
_FLOWER_KEYS = ("partition-id", "num-partitions")


class NodeError(FedoaError):
    """A node's configuration, data or state is unusable (the message names the node)."""


# ---------------------------------------------------------------------------- configuration


@dataclass
class NodeSpec:
    client: str
    data_path: str = ""
    vader_domain: str = ""
    state_dir: str = ""
    eval_path: str | None = None  # None: use the run's eval-path
    rank: int = 0  # the node's LoRA rank (lora-rank); 0: the run's lora.client_ranks, else lora.r
    model_path: str = ""  # the folder base models may be loaded from ("": the node's fedoa cache)
    threads: int = 0  # torch CPU threads of the node's worker; 0: a share of the machine's cores

    @property
    def state_root(self) -> Path:
        return Path(self.state_dir).expanduser() if self.state_dir else cache_dir() / "node-state"

    @property
    def model_root(self) -> Path:
        return (Path(self.model_path).expanduser() if self.model_path else cache_dir()).resolve()


def node_spec(node_config: Mapping[str, Any]) -> NodeSpec:
    """Validate a SuperNode's ``--node-config`` (unknown keys are errors: a typo never passes)."""
    unknown = sorted(k for k in node_config if k not in NODE_KEYS and k not in _FLOWER_KEYS)
    if unknown:
        raise NodeError(f"unknown node-config key(s) {unknown}; known: {', '.join(NODE_KEYS)}", where="node-config")
    for k in NODE_KEYS:
        if k in INT_KEYS:
            v = node_config.get(k, 1)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise NodeError(f"{k} must be a positive integer, e.g. {k}=4", where="node-config")
        elif k in node_config and not isinstance(node_config[k], str):
            raise NodeError(f"{k} must be a quoted string, e.g. {k}=\"...\"", where="node-config")
    client, data_path, vader = (node_config.get(k, "") for k in ("client-name", "data-path", "vader-domain"))
    if bool(data_path) == bool(vader):
        raise NodeError("give exactly one of data-path or vader-domain", where="node-config")
    if not client:
        raise NodeError('client-name is required, e.g. client-name="movie"', where="node-config")
    try:
        client_file_name(client)
    except ValueError as e:
        raise NodeError(str(e), where="node-config client-name") from None
    return NodeSpec(client, data_path, vader, node_config.get("state-dir", ""), node_config.get("eval-path"),
                    node_config.get("lora-rank", 0), node_config.get("model-path", ""), node_config.get("threads", 0))


def confined_eval_path(spec: NodeSpec, run_eval_path: str) -> str:
    """Where this node reads shared test sets: its own ``eval-path`` when it has one (whatever the run
    says); else the run's only when that names no folder ("" or ``embedded:vader``). A run never
    points a node at a folder of the node's machine that the node's operator did not configure."""
    if spec.eval_path is not None:
        return spec.eval_path
    if run_eval_path in ("", "embedded:vader"):
        return run_eval_path
    raise NodeError(f"the run asks node {spec.client!r} to read test sets from {run_eval_path!r}; a node reads only "
                    "the folders its own config names: start it with --eval-path (node-config eval-path)",
                    where="deploy.eval-path")


def _looks_like_hub_id(name: str) -> bool:
    """``owner/name`` or ``name``, written as no file system path is (checked by its text only)."""
    return (bool(name) and not name.startswith((".", "/", "~")) and "\\" not in name and name.count("/") <= 1
            and ".." not in name.split("/") and not name.endswith(".gguf"))


def confined_model(spec: NodeSpec, name: str, gguf_file: str) -> str:
    """What this node loads for the run's ``model.name``: the embedded model, a file or folder inside the
    node's own model root (``model-path``; by default its fedoa cache, where ``fedoa setup`` puts models),
    or a hub id (fetched into the node's own Hugging Face cache; ``HF_HUB_OFFLINE=1`` forbids that).
    A run never makes a node read a file its operator did not put under one of its own folders."""
    if gguf_file and (Path(gguf_file).name != gguf_file or gguf_file in (".", "..") or "\\" in gguf_file):
        raise NodeError(f"model.gguf_file {gguf_file!r} must be a file name inside the model folder", where="model.gguf_file")
    if name.startswith("embedded:"):
        return name
    root = spec.model_root
    candidate = (root / Path(name).expanduser()).resolve()  # an absolute name stays itself
    if (candidate == root or root in candidate.parents) and candidate.exists():
        return str(candidate)
    if _looks_like_hub_id(name) and not Path(name).exists():  # never a folder of the node's working directory
        return name
    raise NodeError(f"the run asks node {spec.client!r} to load model {name!r}, which is neither a hub id nor inside "
                    f"the node's model folder {str(root)!r}; a node loads only what its operator put there: start it "
                    "with --model-path (node-config model-path)", where="model.name")


# ---------------------------------------------------------------------------- data


def _pairs(records: list[Record]) -> list[list[str]]:
    """The distinct (task, category) pairs of records, in first-seen order."""
    return [list(p) for p in dict.fromkeys((r.task, r.category) for r in records)]


def describe_set(records: list[Record]) -> dict[str, Any]:
    """What the server learns about a test set: its size and its (task, category) pairs."""
    return {"size": len(records), "pairs": _pairs(records)}


def score_row(kind: str, set_name: str, sc, records: bool) -> dict[str, Any]:
    """What a node reports for one (model, test set): accuracies and counts; each record's outcome
    (and ROUGE per record) only when the run asked for them (``deploy.record-outcomes``)."""
    def nan_none(x: float) -> float | None:
        return None if x != x else x

    hits = sc.options_hits or sc.generation_hits
    row: dict[str, Any] = {"kind": kind, "set": set_name, "options": nan_none(sc.options),
                           "generation": nan_none(sc.generation),
                           "counts": {"scored": sum(h in "01" for h in hits),
                                      "options_right": sc.options_hits.count("1"),
                                      "generation_right": sc.generation_hits.count("1")}}
    if records:
        row.update(options_hits=sc.options_hits, generation_hits=sc.generation_hits, rouge=sc.rouge)
    return row


# ---------------------------------------------------------------------------- state


class StateStore:
    """A client's private state on the node's disk, one safetensors file per round."""

    def __init__(self, spec: NodeSpec, run_key: str):
        if not re.fullmatch(r"[A-Za-z0-9_-]+", run_key):
            raise NodeError(f"bad run key {run_key!r}")
        self.folder = spec.state_root / spec.client / run_key

    def path(self, round_: int) -> Path:
        return self.folder / f"round-{round_:04d}.safetensors"

    def load(self, round_: int):
        p = self.path(round_)
        if not p.is_file():
            raise NodeError(f"the state of this client after round {round_} is missing ({p}); was the node's "
                            "state-dir changed or deleted? Start the run afresh to begin from new adapters")
        return load_client_state(p)

    def save(self, round_: int, state) -> None:
        save_client_state(self.path(round_), state)

    def prune(self, keep_from: int) -> None:
        """Delete states of rounds before ``keep_from`` (the server will never ask for them)."""
        for p in self.folder.glob("round-*.safetensors"):
            try:
                r = int(p.name[len("round-"): -len(".safetensors")])
            except ValueError:
                continue
            if r < keep_from:
                p.unlink(missing_ok=True)

    def write_info(self, info: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "run.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------- the resident model

_RESIDENT: dict[str, Any] = {}


def resident_model(cfg: RunConfig):
    """The node's base model with its LoRA slots, loaded once per process for a given model, LoRA
    shape and prompt encoding, and kept: a node's worker serves every message of a run (every run
    with the same model) from it. Only the last one is kept, so a node never holds two base models."""
    from fedoa.runtime.session import build_model

    key = json.dumps([cfg.model.model_dump(), cfg.lora.model_dump(), cfg.data.template], sort_keys=True)
    if key not in _RESIDENT:
        _RESIDENT.clear()
        _RESIDENT[key] = build_model(cfg)
    return _RESIDENT[key]


# ---------------------------------------------------------------------------- handlers


@dataclass
class NodeRun:
    """A node's view of one run: the config, the node spec and the run-wide settings."""

    cfg: RunConfig
    spec: NodeSpec
    eval_path: str

    @classmethod
    def from_context(cls, node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> "NodeRun":
        from fedoa.runtime.flower.runconfig import unflatten

        spec = node_spec(node_config)
        cfg, deploy = unflatten(dict(run_config))
        cfg.model.name = confined_model(spec, cfg.model.name, cfg.model.gguf_file)
        cfg.model.threads = spec.threads or cfg.model.threads  # the node's cores are the node's choice
        return cls(cfg, spec, confined_eval_path(spec, deploy.eval_path))

    def client(self) -> ClientData:
        return node_client(self.cfg, self.spec.client, self.spec.data_path, self.spec.vader_domain)

    def rank(self) -> int:
        """The LoRA rank this node trains at: its own lora-rank, else the run's table, else lora.r."""
        from fedoa.runtime.common import client_rank

        rank = self.spec.rank or client_rank(self.cfg, self.spec.client)
        if rank > self.cfg.lora.r:
            raise NodeError(f"lora-rank {rank} exceeds the run's lora.r = {self.cfg.lora.r}", where="node-config")
        return rank

    def _client_state(self, session, store: StateStore, base_round: int):
        if base_round <= 0:
            return session.algorithm.init_client(session.am, self.spec.client)
        return store.load(base_round)

    # -------------------------------------------------------------- query

    def query(self) -> dict[str, Any]:
        client = self.client()
        sets = {name: describe_set(recs) for name, recs in shared_test_sets(self.cfg, self.eval_path).items()}
        return {
            "client": self.spec.client,
            "train": len(client.train),
            "train-pairs": _pairs(client.train),
            "test": describe_set(client.test),
            "sets": sets,
            "rank": self.rank(),
        }

    # -------------------------------------------------------------- train

    def train(self, values: Mapping[str, Any], global_state) -> tuple[dict[str, Any], Any]:
        """The reply's values and the client update (its state, or its compressed ``upload``)."""
        from fedoa.runtime.common import client_round
        from fedoa.runtime.session import open_session

        start = time.perf_counter()
        round_, base = int(values["round"]), int(values["state-round"])
        store = StateStore(self.spec, str(values["run-key"]))
        client = self.client()
        session = open_session(self.cfg, clients=[client], model=resident_model(self.cfg))
        state = self._client_state(session, store, base)
        ctx = session.context(self.spec.client, state)
        update = client_round(session.algorithm, ctx, global_state, round_, self.rank())
        store.save(round_, ctx.state)  # with the residual of a compressed upload (error feedback)
        store.prune(base - 1)  # the server keeps its previous checkpoint: keep the state it points to
        store.write_info({"client": self.spec.client, "last_trained_round": round_, "method": self.cfg.method})
        phases = [dataclasses.asdict(p) for p in update.phases]
        return {"client": self.spec.client, "round": round_, "num-examples": update.num_examples, "phases": phases,
                "seconds": time.perf_counter() - start}, update

    # -------------------------------------------------------------- evaluate

    def _score(self, session, evaluator, state, plan, kinds: list[str], pairs: list[tuple[str, str]],
               global_state) -> dict:
        """(kind, set) -> SetScores of this node's models: with ``runtime.batch_clients`` on (auto:
        on CUDA) all of them score a batch of records in one pass (docs/batched.md), as in the
        in-process run; else one model after another."""
        from fedoa.evaluation.batched import evaluate_batched
        from fedoa.evaluation.matrix import evaluate_models
        from fedoa.runtime.common import activate_model, batches_clients, describe_model, model_identity

        algo, me, only = session.algorithm, self.spec.client, set(pairs)

        def identity(kind: str, client: str) -> str:
            return model_identity(algo, kind, client)

        def activate(kind: str, client: str) -> str | None:
            return activate_model(session.context(me, state), algo, kind, global_state)

        if batches_clients(self.cfg, session.am.device):
            def describe(kind: str, client: str):
                return describe_model(session.context(me, state), algo, kind, global_state)

            by_kind = evaluate_batched(evaluator, plan, kinds, identity, describe, activate, global_state, only=only)
        else:
            by_kind = evaluate_models(evaluator, plan, kinds, identity, activate, only=only)
        return {(k, s): by_kind[k][me][s] for k, s in pairs}

    def evaluate(self, values: Mapping[str, Any], global_state) -> dict[str, Any]:
        from fedoa.evaluation.matrix import EvalPlan
        from fedoa.runtime.common import eval_kinds
        from fedoa.runtime.session import open_session

        start = time.perf_counter()
        pairs = [tuple(p) for p in json.loads(values["pairs"])]
        base = int(values["state-round"])
        store = StateStore(self.spec, str(values["run-key"]))
        client = self.client()
        wanted = {s for _, s in pairs}
        shared = shared_test_sets(self.cfg, self.eval_path) if wanted - {client.name} else {}
        readable = {**shared, client.name: client.test}
        missing = sorted(wanted - set(readable))
        if missing:
            raise NodeError(f"test set(s) {missing} not readable on node {client.name!r} (eval-path {self.eval_path!r})")
        limit = int(values.get("limit", 0)) or None  # a look between rounds: the first records of each set
        sets = {s: readable[s][:limit] for s in sorted(wanted)}
        plan = EvalPlan(sets=sets, id_set={client.name: client.name}, ood_sets={client.name: [s for s in sets if s != client.name]})
        session = open_session(self.cfg, clients=[client], plan=plan, model=resident_model(self.cfg))
        algo, am = session.algorithm, session.am
        state = self._client_state(session, store, base)
        evaluator = session.evaluator()
        records = values.get("records") is True  # per-record outcomes only when the run opted in
        order = {k: i for i, k in enumerate(eval_kinds(self.cfg, algo))}
        kinds = sorted({k for k, _ in pairs}, key=lambda k: order.get(k, len(order)))
        scored = self._score(session, evaluator, state, plan, kinds, pairs, global_state)
        scores = [score_row(kind, s, scored[(kind, s)], records) for kind in kinds for k, s in pairs if k == kind]
        for kind, st in algo.exported_adapters(state, global_state).items():
            if kind != "global":  # the server writes the global adapter; personal ones stay here
                am.save(st, store.folder / "adapters" / kind)
        return {"client": client.name, "scores": scores, "seconds": time.perf_counter() - start}
