"""Data loading: sources (vader, jsonl, hf) -> task splits -> federated clients."""
from __future__ import annotations

from typing import TYPE_CHECKING

from fedoa.data.partition import cap_records, partition_tasks
from fedoa.data.records import ClientData, Record
from fedoa.errors import DataError

if TYPE_CHECKING:
    from fedoa.config import DataConfig

TaskSplits = dict[str, tuple[list[Record], list[Record]]]

__all__ = ["ClientData", "Record", "check_clients", "load_clients", "load_tasks", "make_clients"]


def load_tasks(cfg: DataConfig, seed: int) -> TaskSplits:
    """task -> (train, test) from the configured source (loaders are imported on demand)."""
    if cfg.source == "vader":
        from fedoa.data.vader import load_vader

        return load_vader(cfg.tasks, cfg.test_fraction, seed)
    if cfg.source == "jsonl":
        from fedoa.data.jsonl import load_jsonl_folder

        return load_jsonl_folder(cfg.path, cfg.tasks)
    if cfg.source == "hf":
        from fedoa.data.hf import load_hf

        return load_hf(cfg.path, cfg.hf_columns, cfg.hf_train_split, cfg.hf_test_split, cfg.tasks, cfg.hf_config)
    raise DataError(f"unknown data source {cfg.source!r}", where="data.source")


def check_clients(clients: list[ClientData]) -> None:
    for c in clients:
        if not c.train:
            raise DataError(f"client {c.name!r} has no training records", where="data")
        if not c.test:
            raise DataError(f"client {c.name!r} has no test records", where="data")


def train_key(client: str, run_seed: int | None = None) -> str:
    """The key of a client's training cap: drawn with ``split_seed`` alone, or also with the run's seed
    (``data.train_subset_seed = "run"``: each seed its own training subset, the test sets unchanged)."""
    return f"{client}:train" if run_seed is None else f"{client}:train:run{run_seed}"


def make_clients(tasks: TaskSplits, cfg: DataConfig, seed: int, run_seed: int | None = None) -> list[ClientData]:
    """Partition loaded tasks into clients, cap each client, then check none is empty. ``run_seed``: draw
    the training caps per run seed too (:func:`train_key`)."""
    clients = partition_tasks(tasks, cfg, seed)
    for c in clients:
        c.train = cap_records(c.train, cfg.train_per_client, seed, train_key(c.name, run_seed))
        c.test = cap_records(c.test, cfg.test_per_client, seed, f"{c.name}:test")
    check_clients(clients)
    return clients


def load_clients(cfg: DataConfig, seed: int) -> list[ClientData]:
    """The clients of a run: load, partition, cap per client, then check none is empty."""
    return make_clients(load_tasks(cfg, seed), cfg, seed)
