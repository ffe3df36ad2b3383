"""The scenario: who holds which records.

From the configured data: the clients (one per task, or a Flower Datasets partition: docs/data.md), each capped
at ``train_per_client``/``test_per_client`` records with a seeded sample, and, under the
leave-category-out protocol, the held-out category's test sets that no client holds. A Flower
node's data folder is one client (:func:`node_client`); shared test sets are read the same way
(:func:`shared_test_sets`), so a deployment meets exactly the test data of ``fedoa run``.
Which of these test sets count as ID or OOD is the protocol's business (:mod:`fedoa.evaluation.protocols`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fedoa.data import TaskSplits, load_tasks, make_clients, train_key
from fedoa.data.partition import cap_records
from fedoa.data.records import ClientData, Record
from fedoa.errors import ConfigError, DataError

if TYPE_CHECKING:
    from fedoa.config import RunConfig

EMBEDDED_VADER = "embedded:vader"


@dataclass
class Scenario:
    clients: list[ClientData]
    #: task -> category of every loaded task (a task without a category is its own)
    task_category: dict[str, str]
    #: test sets held by no client: the held-out category's tasks (leave-category-out)
    heldout: dict[str, list[Record]] = field(default_factory=dict)
    holdout: str = ""


def task_categories(tasks: TaskSplits) -> dict[str, str]:
    """task -> category (from its records; a task without one is its own category)."""
    out: dict[str, str] = {}
    for task, (train, test) in tasks.items():
        cats = {r.category for r in train + test}
        if len(cats) > 1:
            raise DataError(f"task {task!r} mixes categories {sorted(cats)}", where="data")
        out[task] = (cats.pop() if cats else "") or task
    return out


def categories_of(task_category: dict[str, str]) -> dict[str, list[str]]:
    """category -> its tasks, in the tasks' order."""
    out: dict[str, list[str]] = {}
    for task, cat in task_category.items():
        out.setdefault(cat, []).append(task)
    return out


def holdout_categories(cfg: RunConfig) -> list[str]:
    """The categories of the configured data (what leave-category-out can hold out)."""
    return list(categories_of(task_categories(load_tasks(cfg.data, cfg.data.split_seed))))


def run_seed_of(cfg: RunConfig) -> int | None:
    """The run seed that draws each client's training subset, or None when ``split_seed`` alone does."""
    return cfg.seed if cfg.data.train_subset_seed == "run" else None


def build_scenario(cfg: RunConfig, holdout: str | None = None) -> Scenario:
    """The clients of ``cfg`` (``holdout`` overrides ``protocol.holdout``)."""
    seed = cfg.data.split_seed
    tasks = load_tasks(cfg.data, seed)
    task_category = task_categories(tasks) if cfg.protocol.name != "natural" else {}
    if cfg.protocol.name != "leave-category-out":
        return Scenario(make_clients(tasks, cfg.data, seed, run_seed_of(cfg)), task_category)
    holdout = cfg.protocol.holdout if holdout is None else holdout
    by_category = categories_of(task_category)
    if not holdout:
        raise ConfigError(f"is required for 'leave-category-out'; one of: {', '.join(by_category)}",
                          where="protocol.holdout")
    if holdout not in by_category:
        raise ConfigError(f"unknown category {holdout!r}; one of: {', '.join(by_category)}", where="protocol.holdout")
    if len(by_category) < 2:
        raise ConfigError("needs data of at least two categories", where="protocol.holdout")
    kept = {t: v for t, v in tasks.items() if task_category[t] != holdout}
    heldout = {t: cap_records(tasks[t][1], cfg.data.test_per_client, seed, f"{t}:test") for t in by_category[holdout]}
    empty = [t for t, recs in heldout.items() if not recs]
    if empty:
        raise DataError(f"held-out task(s) {empty} have no test records", where="data")
    return Scenario(make_clients(kept, cfg.data, seed, run_seed_of(cfg)), task_category, heldout, holdout)


# ---------------------------------------------------------------------------- one node's data


def node_client(cfg: RunConfig, name: str, data_path: str = "", vader_domain: str = "") -> ClientData:
    """One Flower node's client: every task of its data merged, then capped like any client.

    The run's ``[data]`` settings that shape a client still apply (caps, ``split_seed``, ``train_subset_seed``,
    ``test_fraction`` for VADER); ``source``/``path``/``tasks``/``partition`` do not: the node's
    data *is* its partition.
    """
    seed = cfg.data.split_seed
    if vader_domain:
        from fedoa.data.vader import load_vader

        tasks = load_vader([vader_domain], cfg.data.test_fraction, seed)
    else:
        from fedoa.data.jsonl import load_jsonl_folder

        tasks = load_jsonl_folder(data_path)
    train = [r for tr, _ in tasks.values() for r in tr]
    test = [r for _, te in tasks.values() for r in te]
    client = ClientData(name, cap_records(train, cfg.data.train_per_client, seed, train_key(name, run_seed_of(cfg))),
                        cap_records(test, cfg.data.test_per_client, seed, f"{name}:test"))
    if not client.train or not client.test:
        raise DataError(f"node {name!r} has no {'training' if not client.train else 'test'} records",
                        where=data_path or f"vader:{vader_domain}")
    return client


def shared_test_sets(cfg: RunConfig, eval_path: str) -> dict[str, list[Record]]:
    """Test sets every node may read (OOD): task -> records, in (category, task) order, capped like
    a client's. ``eval_path`` is a folder of ``<category>/<task>_test.jsonl`` or ``embedded:vader``."""
    seed, cap = cfg.data.split_seed, cfg.data.test_per_client
    if not eval_path:
        return {}
    if eval_path == EMBEDDED_VADER:
        from fedoa.data.vader import load_vader

        return {d: cap_records(te, cap, seed, f"{d}:test") for d, (_, te) in load_vader((), cfg.data.test_fraction, seed).items()}
    from fedoa.data.jsonl import load_jsonl_file

    root = Path(eval_path).expanduser()
    if not root.is_dir():
        raise DataError("eval-path folder not found", where=str(root))
    found: dict[str, tuple[str, Path]] = {}
    for file in sorted(root.glob("*/*_test.jsonl")):
        task = file.name[: -len("_test.jsonl")]
        if task in found:
            raise DataError(f"test set {task!r} appears in two categories", where=str(root))
        found[task] = (file.parent.name, file)
    if not found:
        raise DataError("no <category>/<task>_test.jsonl files found", where=str(root))
    return {task: cap_records(load_jsonl_file(found[task][1], category=cat, task=task), cap, seed, f"{task}:test")
            for cat, task in sorted((c, t) for t, (c, _) in found.items())}


def data_checks(clients: list[ClientData]) -> dict[str, dict[str, int]]:
    """Per client, records repeated within its training or test data, and test records also in its
    training data (same instruction and answer). Not errors: counted, warned about, reported."""
    out: dict[str, dict[str, int]] = {}
    for c in clients:
        train = [(r.instruction, r.output) for r in c.train]
        test = [(r.instruction, r.output) for r in c.test]
        counts = {"duplicate_train": len(train) - len(set(train)), "duplicate_test": len(test) - len(set(test)),
                  "test_in_train": len(set(test) & set(train))}
        if any(counts.values()):
            out[c.name] = counts
    return out
