"""What a run knows between rounds, typed: the ledger the driver keeps and checkpoints.

It replaces a free-form dict: every field says what it holds, the checkpoint stores it as JSON
(never pickle) and a resumed run reads it back through :meth:`RunLedger.from_json`, which
accepts ledgers written before a field was added (the field takes its default).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class FailureEntry:
    """A client that did not deliver in a round (or in the final evaluation: ``round = "eval"``)."""

    round: int | str
    client: str
    phase: str
    reason: str
    node: int | None = None

    def line(self) -> str:
        where = "evaluation" if self.round == "eval" else f"round {self.round}"
        node = f" (node {self.node})" if self.node is not None else ""
        return f"{where}: client {self.client}{node} failed in {self.phase}: {self.reason}"


@dataclass
class RunLedger:
    #: the run's config as a dict (a resumed run must have the same)
    config: dict[str, Any]
    #: every client's name, in the order the transport reported them
    clients: list[str]
    bytes_up: int = 0
    bytes_down: int = 0
    #: client uploads received (bytes_up / uploads: bytes per client-round)
    uploads: int = 0
    train_seconds: float = 0.0
    #: round (as a string: a JSON key) -> the clients whose updates were aggregated
    updates_per_round: dict[str, list[str]] = field(default_factory=dict)
    failures: list[FailureEntry] = field(default_factory=list)
    #: the evaluations between rounds (``round_entry`` dicts)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    #: the DP accountant's epsilon after each round (DP runs only)
    dp_epsilon: list[float] = field(default_factory=list)
    #: DP runs: in how many rounds each client was sampled (epsilon for readers of participation logs)
    dp_participation: dict[str, int] = field(default_factory=dict)
    #: the change norms accepted in earlier rounds (the derived absolute bound, trust.max_norm = 0)
    accepted_norms: list[float] = field(default_factory=list)
    #: the transport's own state (e.g. which round each Flower node's state is at)
    transport: dict[str, Any] = field(default_factory=dict)

    def fail(self, round_: int | str, client: str, phase: str, reason: str, node: int | None = None) -> FailureEntry:
        entry = FailureEntry(round_, client, phase, reason, node)
        self.failures.append(entry)
        return entry

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunLedger":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["failures"] = [FailureEntry(**f) for f in values.get("failures", [])]
        return cls(**values)
