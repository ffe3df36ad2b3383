"""The small interface every method implements: client update + server aggregation + what is evaluated.

A runtime (in-process simulation or a Flower app) owns the loop over rounds and clients; a method
only says what one client does with the global adapter it receives, how the server combines the
uploads, and which adapters make the models that get evaluated.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from fedoa.algorithms.aggregation import clip_change, combine
from fedoa.config import RunConfig
from fedoa.data.prompts import Encoded, PromptEncoder
from fedoa.model.adapters import (
    GLOBAL,
    PERSONAL,
    AdapterModel,
    AdapterState,
    state_digest,
)
from fedoa.model.mixing import mixer_off
from fedoa.model.slots import SlotModel
from fedoa.model.uploads import Upload
from fedoa.seeding import derive_seed, seed_text
from fedoa.training.joint import SlotJob, joint_features, train_jobs
from fedoa.training.loop import LocalResult, Objective, planned_steps, train_slot
from fedoa.training.losses import task_objective


def is_untrained(state: AdapterState) -> bool:
    """LoRA starts with B = 0 and any training step moves B: all-zero B means never trained."""
    return all(not v.any() for k, v in state.items() if ".lora_B." in k)


# A client's private, persistent state: named adapter states (e.g. "personal"). It never leaves
# the client, and it is saved with safetensors, so it holds tensors only.
ClientState = dict[str, AdapterState]


#: regularizer terms whose value at the first and at the last optimizer step of a local update
#: metrics.jsonl also shows (``reg_first``, ``reg_last``, ...): does the regularizer move?
TRACED = ("reg", "prox")


@dataclass
class Phase:
    """One local training phase of a client update (a line of metrics.jsonl)."""

    phase: str
    steps: int
    examples: int
    seconds: float
    metrics: dict[str, float]
    #: True when the phase's result came from a :class:`StepMemo` instead of being computed
    reused: bool = False

    @classmethod
    def of(cls, phase: str, r: LocalResult) -> "Phase":
        """The phase of a local update; a regularizer term (``TRACED``) also at its first and last step."""
        traced = {f"{k}_{end}": ends[k] for k in TRACED for end, ends in (("first", r.first), ("last", r.last))
                  if k in ends}
        return cls(phase, r.steps, r.examples, r.seconds, {**r.metrics, **traced})


class StepMemo(Protocol):
    """Results of deterministic local steps by key (``fedoa compare`` shares them across runs)."""

    def get(self, key: str) -> tuple[AdapterState, Phase] | None: ...

    def put(self, key: str, state: AdapterState, phase: Phase) -> None: ...


@dataclass
class ClientContext:
    """Everything a client update may touch."""

    name: str
    am: AdapterModel
    train: list[Encoded]
    state: ClientState
    cfg: RunConfig
    pad_id: int
    progress: Callable[[int], None] | None = None
    memo: StepMemo | None = None

    def seed_text(self, round_: int, phase: str) -> str:
        return seed_text(self.cfg.seed, round_, self.name, phase)

    def step_key(self, phase: str, round_: int, start: AdapterState) -> str:
        """Everything a plain task-loss step depends on: start state, data, seeds and settings."""
        cfg = self.cfg
        h = hashlib.sha256()
        h.update(state_digest(start).encode())
        h.update(self.seed_text(round_, phase).encode())
        h.update(json.dumps([cfg.train.model_dump(), cfg.lora.model_dump(), cfg.model.model_dump(),
                             str(self.am.device)], sort_keys=True).encode())
        for e in self.train:
            h.update(f"{e.prompt}|{e.response};".encode())
        return h.hexdigest()


def train_on_task(ctx: ClientContext, slot: str, start: AdapterState, round_: int, phase: str,
                  objective: Objective = task_objective, memoize: bool = True) -> tuple[AdapterState, Phase]:
    """Train ``slot`` from ``start`` on the client's data; reuse a memoized result when the step is
    the plain task-loss step (FedIT's local update and the global step of every two-adapter
    method are the same computation, so ``fedoa compare`` runs it once per client and round)."""
    key = ctx.step_key(phase, round_, start) if ctx.memo is not None and memoize else None
    if key is not None and (hit := ctx.memo.get(key)) is not None:
        return hit
    ctx.am.set(slot, start)
    result = train_slot(ctx.am, slot, ctx.train, ctx.cfg.train, objective, ctx.seed_text(round_, phase),
                        ctx.pad_id, ctx.progress)
    state, done = ctx.am.get(slot), Phase.of(phase, result)
    if key is not None:
        ctx.memo.put(key, state, done)
    return state, done


@dataclass
class ServerContext:
    """What the server holds besides the adapter states: a model to run and the tokenizer's encoder.

    The in-process transport hands its resident model (the one the clients take turns on) to
    :meth:`Algorithm.attach_server` before round 1; a method whose aggregation runs the model
    (PerAda's distillation) keeps it, every other method ignores it. The server may use any LoRA
    slot between rounds: every client update and evaluation loads its own states first.
    """

    am: AdapterModel
    encoder: PromptEncoder
    cfg: RunConfig

    @property
    def pad_id(self) -> int:
        return self.encoder.tokenizer.pad_token_id


@dataclass
class ClientUpdate:
    """What a client sends back: its global-adapter state (or None) and its metrics. With
    ``fed.upload`` other than float32 the state travels as ``upload`` (a compressed change) and
    the server's validation decodes it into ``state``."""

    client: str
    state: AdapterState | None
    num_examples: int
    phases: list[Phase] = field(default_factory=list)
    upload: Upload | None = None


class Algorithm(ABC):
    """Base class of all methods. Subclasses set ``name`` and implement ``client_update``."""

    name: ClassVar[str] = ""
    #: which models are evaluated: "personal" (one per client) and/or "global" (shared).
    evaluated: ClassVar[tuple[str, ...]] = ("personal", "global")
    #: False for methods without a server (local training only).
    federated: ClassVar[bool] = True
    #: True for methods whose personal step follows ``fed.personal_start_round``
    personal_schedule: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    @property
    def settings(self):
        """This method's own config section (``[<name>]``), or None when it has none."""
        return self.cfg.settings_of(self.name)

    # ---------------------------------------------------------------- state

    def init_global(self, am: AdapterModel) -> AdapterState:
        return am.fresh_state(derive_seed(self.cfg.seed, "global-init"))

    def init_client(self, am: AdapterModel, client: str) -> ClientState:
        return {PERSONAL: am.fresh_state(derive_seed(self.cfg.seed, "personal-init", client))}

    def starting_personal(self, client_state: ClientState, global_state: AdapterState) -> AdapterState:
        """The personal adapter a personal step starts from (or that evaluation uses).

        With ``fed.personal_init = "global"`` an untrained personal adapter is replaced by the
        global one; afterwards the client's own adapter always continues.
        """
        personal = client_state[PERSONAL]
        if self.cfg.fed.personal_init == "global" and is_untrained(personal):
            return {k: v.clone() for k, v in global_state.items()}
        return personal

    # ---------------------------------------------------------------- round

    def training_groups(self, sampled: list[str], clients: list[str]) -> dict[str, list[str]]:
        """Who trains together this round: ``{trainer name: [clients whose data it uses]}``.

        ``sampled`` are the round's sampled clients, ``clients`` all of them. By default every
        sampled client trains on its own data; a trainer whose name is not a client (e.g. the
        pooled trainer of ``centralized``) gets a transient, empty state.
        """
        return {n: [n] for n in sampled}

    @abstractmethod
    def client_update(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> ClientUpdate:
        """Train locally from the received ``global_state``; update ``ctx.state`` in place."""

    # ---------------------------------------------------------------- batched clients

    def client_jobs(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> list[SlotJob] | None:
        """The same client update as :meth:`client_update`, stated as slot jobs that the batched
        engine trains together with every other sampled client's (:func:`batched_updates`).
        None: this method (or this configuration of it) trains its clients one at a time."""
        return None

    def finish_jobs(self, ctx: ClientContext, global_state: AdapterState, round_: int,
                    done: dict[str, tuple[AdapterState, Phase]]) -> ClientUpdate:
        """The client update from its trained jobs (``done``: phase -> (state, Phase)); updates ``ctx.state``."""
        raise NotImplementedError(f"{self.name} states no slot jobs")

    def aggregate(
        self, updates: list[ClientUpdate], global_state: AdapterState, round_: int
    ) -> AdapterState:
        """The configured rule (FedAvg by default) over the uploaded states, in client-name order
        (float sums are order-sensitive), each change clipped first when ``fed.clip_norm`` says so."""
        ups = sorted((u for u in updates if u.state is not None), key=lambda u: u.client)
        if not ups:
            return global_state
        fed = self.cfg.fed
        states = [u.state for u in ups]
        if fed.clip_norm > 0:
            states = [clip_change(s, global_state, fed.clip_norm) for s in states]
        weights = [float(u.num_examples) if fed.aggregation == "examples" else 1.0 for u in ups]
        return combine(states, weights, fed.aggregation, fed.trim_fraction)

    # ---------------------------------------------------------------- server

    def needs_server_model(self) -> bool:
        """True when :meth:`aggregate` runs a model on server-side data (:meth:`attach_server`);
        a transport that cannot provide one refuses the method before round 1."""
        return False

    def attach_server(self, server: ServerContext) -> None:
        """The server's model and encoder, given by the transport before round 1 (in-process: the
        resident model). Bad server-side input (e.g. an empty data pool) fails here."""

    def server_metrics(self, round_: int) -> list[dict]:
        """Lines for ``metrics.jsonl`` about the server's own work in ``round_`` (after
        :meth:`aggregate`), each with its ``phase``; the driver adds round and ``client = "server"``."""
        return []

    def local_steps(self, num_examples: int, round_: int) -> int:
        """Optimizer steps one client update takes (for progress bars)."""
        return planned_steps(num_examples, self.cfg.train)

    # ---------------------------------------------------------------- evaluation

    def eval_identity(self, kind: str, client: str) -> str:
        """Models with the same identity are evaluated once (the global adapter is shared)."""
        return "global" if kind == "global" else f"{kind}/{client}"

    def setup_eval(self, ctx: ClientContext, kind: str, global_state: AdapterState) -> None:
        """Load and activate the adapters that make the ``kind`` model of client ``ctx.name``."""
        am = ctx.am
        mixer_off(am)
        if kind == "global":
            am.set(GLOBAL, global_state)
            am.use(GLOBAL)
        elif kind == "personal":
            am.set(PERSONAL, self.starting_personal(ctx.state, global_state))
            am.use(PERSONAL)
        else:
            raise ValueError(f"{self.name} does not evaluate {kind!r}")

    def eval_model(self, ctx: ClientContext, kind: str, global_state: AdapterState) -> SlotModel | None:
        """The model :meth:`setup_eval` activates, as slot adapters for batched evaluation (every
        model in one pass, ``evaluation/batched.py``); None: it must be activated and scored alone.
        A subclass that overrides ``setup_eval`` and not this is scored alone (its models are its own)."""
        if not restates(self, Algorithm, "eval_model", "setup_eval"):
            return None
        if kind == "global":
            return SlotModel(global_state)
        if kind == "personal":
            return SlotModel(self.starting_personal(ctx.state, global_state))
        raise ValueError(f"{self.name} does not evaluate {kind!r}")

    def eval_uses_training_data(self, kind: str) -> bool:
        """True when the ``kind`` model depends on the client's training prompts (an instance-wise
        mix weighs the adapters by similarity to them): rebuilding it later needs the run's data."""
        return False

    def exported_adapters(
        self, client_state: ClientState, global_state: AdapterState
    ) -> dict[str, AdapterState]:
        """Adapters written to DIR/adapters: ``{"global": ..., "personal": ...}`` per client."""
        out = {}
        if "global" in self.evaluated:
            out["global"] = global_state
        if "personal" in self.evaluated and PERSONAL in client_state:
            out["personal"] = client_state[PERSONAL]
        return out


def restates(algo: Algorithm, owner: type, jobs_method: str, *methods: str) -> bool:
    """True unless ``algo`` overrides one of ``methods`` of ``owner`` without also overriding
    ``jobs_method``: a subclass that changes the update's objective or shape (PerAda's personal
    objective, FedLoRA's update) is not batched by the jobs its parent states."""
    cls = type(algo)
    if getattr(cls, jobs_method) is not getattr(owner, jobs_method):
        return True
    return all(getattr(cls, m) is getattr(owner, m) for m in methods)


def global_job(ctx: ClientContext, global_state: AdapterState, round_: int, **kw) -> SlotJob:
    """The received global adapter trained on the client's data ("global" phase); a plain task-loss
    step (memoizable) unless ``kw`` adds a term."""
    return SlotJob("global", global_state, ctx.train, ctx.seed_text(round_, "global"), memoize=not kw, **kw)


def batched_updates(algo: Algorithm, ctxs: list[ClientContext], global_state: AdapterState, round_: int,
                    progress: Callable[[int], None] | None = None) -> dict[str, ClientUpdate] | None:
    """Every client's update of a round from one joint loop (None when the method cannot batch it).

    Memoized plain steps are reused per client (keys apart from the sequential ones: the results
    agree within float rounding, not bit for bit); the regularizers' target features (the received
    global adapter's) are computed for every client in one no-grad pass, or captured by a first
    joint loop (FedOA's ``target_features = "global_step"``: every global step, then every personal one).
    """
    planned = [(ctx, algo.client_jobs(ctx, global_state, round_)) for ctx in ctxs]
    if not ctxs or any(jobs is None for _, jobs in planned):
        return None
    done: dict[str, dict[str, tuple[AdapterState, Phase]]] = {ctx.name: {} for ctx in ctxs}
    todo: list[tuple[ClientContext, SlotJob, str | None]] = []
    for ctx, jobs in planned:
        for job in jobs:
            key = ctx.step_key(f"{job.phase}@batched", round_, job.start) if job.memoize and ctx.memo is not None else None
            hit = ctx.memo.get(key) if key is not None else None
            if hit is not None:
                done[ctx.name][job.phase] = hit
            else:
                todo.append((ctx, job, key))
    # jobs whose regularizer targets another job's captured features train after it (a second loop)
    later = [t for t in todo if t[1].reg is not None and t[1].reg.target_from]
    first = [t for t in todo if not any(t is x for x in later)]
    for stage in (first, later):
        for ctx, job, _ in stage:
            if job.reg is not None and job.reg.target_from:
                job.reg.target = next(j.captured for c, j, _ in first if c is ctx and j.phase == job.reg.target_from)
        train_stage(stage, global_state, done, progress)
    return {ctx.name: algo.finish_jobs(ctx, global_state, round_, done[ctx.name]) for ctx in ctxs}


def train_stage(todo: list[tuple[ClientContext, SlotJob, str | None]], global_state: AdapterState,
                done: dict[str, dict[str, tuple[AdapterState, Phase]]], progress: Callable[[int], None] | None) -> None:
    """Train ``todo`` in one joint loop; results into ``done`` (and the memo)."""
    if not todo:
        return
    ctx0 = todo[0][0]
    am, cfg = ctx0.am, ctx0.cfg
    jobs = [job for _, job, _ in todo]
    fill_targets(am, jobs, global_state, cfg.train.micro_batch_size, ctx0.pad_id)
    fixed = global_state if any(job.fixed_weight for job in jobs) else None
    trained = train_jobs(am, jobs, cfg.train, ctx0.pad_id, fixed, progress, compile_step=cfg.train.compile)
    for (ctx, job, key), (state, result) in zip(todo, trained):
        phase = Phase.of(job.phase, result)
        done[ctx.name][job.phase] = (state, phase)
        if key is not None:
            ctx.memo.put(key, state, phase)


def fill_targets(am: AdapterModel, jobs: list[SlotJob], global_state: AdapterState, micro_batch_size: int,
                 pad_id: int) -> None:
    """The received global adapter's features of every regularized job's examples, in one pass."""
    needy = [j for j in jobs if j.reg is not None and j.reg.target is None]
    if not needy:
        return
    am.set(GLOBAL, global_state)
    for kind in sorted({j.reg.feature for j in needy}):
        group = [j for j in needy if j.reg.feature == kind]
        feats = joint_features(am, GLOBAL, [j.examples for j in group], kind, micro_batch_size * len(group), pad_id)
        for job, f in zip(group, feats):
            job.reg.target = f
