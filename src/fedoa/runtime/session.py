"""What every runtime sets up before round 1: data, the resident model, the method."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from fedoa.algorithms import make_algorithm
from fedoa.algorithms.base import Algorithm, ClientContext
from fedoa.config import RunConfig
from fedoa.data.prompts import Encoded, PromptEncoder
from fedoa.data.records import ClientData
from fedoa.data.scenario import data_checks
from fedoa.errors import ConfigError, warn
from fedoa.evaluation.matrix import EvalPlan, Evaluator, default_plan
from fedoa.evaluation.protocols import load_protocol
from fedoa.model.adapters import AdapterModel
from fedoa.model.base import base_model_path, load_base


@dataclass
class Session:
    cfg: RunConfig
    clients: list[ClientData]
    am: AdapterModel
    encoder: PromptEncoder
    algorithm: Algorithm
    train: dict[str, list[Encoded]]
    plan: EvalPlan
    setup_seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    #: scores shared by sessions of the same model (see Evaluator.cache)
    score_cache: dict | None = None
    #: results of plain task-loss steps shared by the runs of a comparison (see DiskMemo)
    memo: object | None = None
    #: what the data checks found (cut prompts, duplicates, test records seen in training)
    data: dict = field(default_factory=dict)

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def context(self, client: str, state, progress=None) -> ClientContext:
        return ClientContext(client, self.am, self.train[client], state, self.cfg, self.pad_id, progress, self.memo)

    def evaluator(self) -> Evaluator:
        ev = Evaluator(self.am, self.encoder, self.cfg.eval, self.pad_id, self.tokenizer.eos_token_id,
                       cache=self.score_cache)
        ev.prepare(self.plan)
        return ev


def build_model(cfg: RunConfig) -> tuple[AdapterModel, PromptEncoder]:
    base, tokenizer = load_base(cfg.model)
    try:
        am = AdapterModel(base, cfg.lora, base_path=base_model_path(cfg.model))
    except ValueError as e:  # PEFT: "Target modules {...} not found in the base model"
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"{cfg.lora.target_modules} match no module of the model ({str(e).splitlines()[0][:80]}); "
                          f"its linear layers are named {linear}", where="lora.target_modules") from None
    try:
        encoder = PromptEncoder(tokenizer, cfg.data.template, cfg.model.max_length)
    except ValueError as e:
        raise ConfigError(str(e), where="data.template") from None
    return am, encoder


def open_session(
    cfg: RunConfig,
    clients: list[ClientData] | None = None,
    plan: EvalPlan | None = None,
    model: tuple[AdapterModel, PromptEncoder] | None = None,
) -> Session:
    """Load and validate everything (config, data, model) before any output is written.

    Without ``clients``, the clients and the plan come from ``cfg.protocol``. ``model`` reuses
    an already loaded ``build_model`` result (``fedoa compare``); its slots are not reset here.
    """
    start = time.perf_counter()
    algorithm = make_algorithm(cfg)
    if clients is None:
        clients, protocol_plan = load_protocol(cfg)
        plan = plan or protocol_plan
    am, encoder = model or build_model(cfg)
    train, truncated = {}, {}
    for c in clients:
        before = encoder.truncated
        train[c.name] = [encoder.encode_train(r) for r in c.train]
        if encoder.truncated > before:
            truncated[c.name] = encoder.truncated - before
    plan = plan or default_plan(clients, ood=cfg.eval.ood)
    session = Session(cfg, clients, am, encoder, algorithm, train, plan, time.perf_counter() - start)
    session.data = {"truncated_train": truncated, "checks": data_checks(clients)}
    for name, n in truncated.items():
        warn(f"client {name!r}: {n} training prompt(s) longer than model.max_length = {cfg.model.max_length} "
             "were cut from the left")
    for name, counts in session.data["checks"].items():
        warn(f"client {name!r}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if v))
    return session
