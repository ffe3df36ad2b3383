"""A finished run folder (``fedoa run --out DIR``) and the models its adapters make.

The verbs that work on a finished run (``fedoa eval``, ``export``, ``generate``, ``report``)
rebuild a client's model exactly as the run evaluated it: the saved adapters go into the slots
and the method's own ``setup_eval`` activates them (the run's evaluation code path).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from fedoa.algorithms import make_algorithm
from fedoa.algorithms.base import Algorithm, ClientContext, ClientState
from fedoa.config import RunConfig, build, changed_keys, load_config, merge, parse_override
from fedoa.data.prompts import Encoded, PromptEncoder
from fedoa.errors import ConfigError, FedoaError
from fedoa.io import read_jsonl
from fedoa.kinds import ZERO_SHOT
from fedoa.model.adapters import (
    GLOBAL,
    PERSONAL,
    AdapterModel,
    AdapterState,
    load_adapter_state,
)
from fedoa.model.slots import SlotModel
from fedoa.reports.results import Results
from fedoa.runtime.common import activate_model, describe_model, eval_kinds

#: keys the saved models depend on (the seed: the draws of an instance-wise mix): they cannot change
FIXED = ("method", "seed", "model.name", "model.gguf_file", "lora.")


class RunFolderError(FedoaError):
    """A run folder that is missing, unfinished or incomplete."""


def finished_file(folder: Path, name: str) -> Path:
    """``folder/name`` of a finished run (one-line errors for a missing folder or file)."""
    if not folder.is_dir():
        raise RunFolderError("run folder not found", where=str(folder))
    if not (folder / name).is_file():
        raise RunFolderError(f"no {name}: not a finished run (fedoa run --out writes it at the end)", where=str(folder))
    return folder / name


def load_results(folder: Path) -> Results:
    path = finished_file(folder, "results.json")
    try:
        return Results.load(path)
    except (ValueError, UnicodeDecodeError) as e:  # bad JSON, a file that is not a run's results
        first = str(e).strip().splitlines()[0]
        raise RunFolderError(f"unreadable results.json: {first}", where=str(path)) from None


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """The lines of ``folder/metrics.jsonl`` ([] when the file is absent)."""
    try:
        return read_jsonl(folder / "metrics.jsonl")
    except ValueError as e:
        raise RunFolderError(f"unreadable {e}", where=str(folder / "metrics.jsonl")) from None


@dataclass
class FinishedRun:
    folder: Path
    #: the config the run trained with
    trained: RunConfig
    #: the config the verb works with: ``trained`` plus the verb's changes (device, data, eval ...)
    cfg: RunConfig
    results: Results
    _train_prompts: dict[str, list[Encoded]] | None = field(default=None, repr=False)
    _states: dict[str, ClientState] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, folder: str | Path, overrides: list[str] = (), replace: dict[str, Any] | None = None) -> "FinishedRun":
        """Read ``folder``; ``replace`` (nested values) then ``overrides`` (``key=value``) change its config."""
        folder = Path(folder)
        results = load_results(folder)
        finished_file(folder, "config.toml")
        trained = load_config(folder / "config.toml")
        values = merge(trained.to_dict(), replace or {})
        for text in overrides:
            values = merge(values, parse_override(text))
        cfg = build(values, "--set") if (replace or overrides) else trained
        fixed = [k for k in changed_keys(trained.to_dict(), cfg.to_dict()) if k.startswith(FIXED)]
        if fixed:
            raise ConfigError("the run's adapters were trained with another value; it cannot change", where=fixed[0])
        return cls(folder, trained, cfg, results)

    # ------------------------------------------------------------------ what the run has

    @cached_property
    def algorithm(self) -> Algorithm:
        return make_algorithm(self.cfg)

    @property
    def clients(self) -> list[str]:
        return list(self.results.clients)

    def kinds(self) -> list[str]:
        """The model kinds the run evaluates (``eval.zero_shot`` adds the base model)."""
        return eval_kinds(self.cfg, self.algorithm)

    def check_client(self, client: str) -> None:
        if client not in self.clients:
            raise RunFolderError(f"no client {client!r} in this run; clients: {', '.join(self.clients)}",
                                 where=str(self.folder))

    def check_kind(self, kind: str) -> None:
        if kind not in self.kinds():
            raise RunFolderError(f"method {self.cfg.method!r} has no {kind!r} model; kinds: {', '.join(self.kinds())}",
                                 where="--kind")

    def adapter_dir(self, kind: str, client: str = "") -> Path:
        return self.folder / "adapters" / (GLOBAL if kind == GLOBAL else f"{kind}/{client}")

    def load_state(self, kind: str, client: str = "") -> AdapterState:
        folder = self.adapter_dir(kind, client)
        if not (folder / "adapter_model.safetensors").is_file():
            raise RunFolderError("adapter missing (no adapter_model.safetensors)", where=str(folder))
        return load_adapter_state(folder)

    # ------------------------------------------------------------------ models

    @cached_property
    def model(self) -> tuple[AdapterModel, PromptEncoder]:
        from fedoa.runtime.session import build_model

        return build_model(self.cfg)

    @cached_property
    def global_state(self) -> AdapterState:
        """The saved global adapter; a method that never trains one has its initial state."""
        if (self.adapter_dir(GLOBAL) / "adapter_model.safetensors").is_file() or GLOBAL in self.algorithm.evaluated:
            return self.load_state(GLOBAL)
        return self.algorithm.init_global(self.model[0])

    def client_state(self, client: str) -> ClientState:
        if client not in self._states:
            evaluated = self.algorithm.evaluated
            self._states[client] = {PERSONAL: self.load_state(PERSONAL, client)} if PERSONAL in evaluated else {}
        return self._states[client]

    def check_models(self, kinds: list[str]) -> None:
        """Load everything the ``kinds`` models need (adapters, the run's data): fails before any work."""
        for kind in kinds:
            self.check_kind(kind)
        if any(k != ZERO_SHOT for k in kinds):
            for c in self.clients:
                self.client_state(c)
            self.global_state  # noqa: B018  (loads it)
        for kind in kinds:
            if self.algorithm.eval_uses_training_data(kind):
                self.training_prompts(kind)

    def activate(self, kind: str, client: str) -> str | None:
        """Make the ``kind`` model of ``client`` the one forward passes use; its score-cache fingerprint."""
        am, encoder = self.model
        train = self.training_prompts(kind).get(client, []) if self.algorithm.eval_uses_training_data(kind) else []
        ctx = ClientContext(client, am, train, self.client_state(client), self.cfg, encoder.tokenizer.pad_token_id)
        try:
            return activate_model(ctx, self.algorithm, kind, self.global_state)
        except ValueError as e:  # adapters whose tensors do not fit the configured LoRA shape
            raise RunFolderError(f"the saved adapters do not fit the model: {e}", where=str(self.folder)) from None

    def describe(self, kind: str, client: str) -> tuple[SlotModel | None, str | None]:
        """The ``kind`` model of ``client`` as slots for batched evaluation, and its fingerprint."""
        am, encoder = self.model
        train = self.training_prompts(kind).get(client, []) if self.algorithm.eval_uses_training_data(kind) else []
        ctx = ClientContext(client, am, train, self.client_state(client), self.cfg, encoder.tokenizer.pad_token_id)
        try:
            model, fingerprint = describe_model(ctx, self.algorithm, kind, self.global_state)
            for state in (model and model.own, self.global_state):
                if state is not None:
                    am.check(GLOBAL, state)
        except ValueError as e:  # adapters whose tensors do not fit the configured LoRA shape
            raise RunFolderError(f"the saved adapters do not fit the model: {e}", where=str(self.folder)) from None
        return model, fingerprint

    def training_prompts(self, kind: str) -> dict[str, list[Encoded]]:
        """Each client's encoded training records, from the run's own data (instance-wise mixes
        weigh the adapters by similarity to them)."""
        if self._train_prompts is None:
            from fedoa.evaluation.protocols import load_protocol

            try:
                clients, _ = load_protocol(self.trained)
            except FedoaError as e:
                raise RunFolderError(
                    f"the {kind!r} model needs the clients' training prompts, but the run's data cannot be loaded "
                    f"({e}); fedoa eval can leave the kind out with --kinds", where=str(self.folder / "config.toml")) from None
            encoder = self.model[1]
            self._train_prompts = {c.name: [encoder.encode_train(r) for r in c.train] for c in clients}
        return self._train_prompts
