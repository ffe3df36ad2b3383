"""Turning task splits into federated clients.

``natural`` is fedoa's own: one client per task, each keeping its task's train and test records.
Every other partition is a Flower Datasets partitioner (``flwr-datasets``, :data:`FLOWER`). It
runs over a small :class:`datasets.Dataset` of the pooled training records -- their position and
the ``partition_by`` field -- shuffled with the split seed first (as Flower's ``FederatedDataset``
shuffles before partitioning); the positions of each partition map back to fedoa's records.

The partitioners split one dataset; fedoa clients also need test sets. Each client's test set
follows its own training data: for every value of ``partition_by`` (a label, task or category),
that value's test records are shuffled and cut among the clients in the shares in which they hold
its training records (so a Dirichlet client's test set has its label mix, and a ``natural_id``
client by task gets its task's test set). Test records whose value no client trains on go to no
client. A client left without test records gets one moved from the client with most.
"""
from __future__ import annotations

import contextlib
import io
import random
import re
import warnings
from typing import TYPE_CHECKING

import numpy as np

from fedoa.data.records import ClientData, Record
from fedoa.errors import DataError, warn

if TYPE_CHECKING:
    from fedoa.config import DataConfig

TaskSplits = dict[str, tuple[list[Record], list[Record]]]

#: ``data.partition`` values served by flwr-datasets -> its partitioner class
FLOWER = {
    "iid": "IidPartitioner",
    "dirichlet": "DirichletPartitioner",
    "inner_dirichlet": "InnerDirichletPartitioner",
    "pathological": "PathologicalPartitioner",
    "shard": "ShardPartitioner",
    "natural_id": "NaturalIdPartitioner",
    "size": "SizePartitioner",
    "linear": "LinearPartitioner",
    "square": "SquarePartitioner",
    "exponential": "ExponentialPartitioner",
}
#: the partitions whose client count is ``data.num_clients`` (the others: ``partition_sizes`` or the data)
COUNTED = ("iid", "dirichlet", "pathological", "shard", "linear", "square", "exponential")
#: the partitions that take ``data.partition_sizes``
SIZED = ("size", "inner_dirichlet")
INSTALL_HINT = "pip install --no-deps flwr-datasets==0.6.1 seaborn==0.13.2"

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def natural_partition(tasks: TaskSplits) -> list[ClientData]:
    """One client per task (the FedOA setting: each client holds one domain)."""
    return [ClientData(name, list(train), list(test)) for name, (train, test) in tasks.items()]


# ---------------------------------------------------------------------------- flwr-datasets


def _partitioner(cfg: DataConfig, seed: int):
    """The configured flwr-datasets partitioner over the column ``key``."""
    try:
        from flwr_datasets import partitioner as fp
    except ImportError as e:  # an optional install (its pins conflict with fedoa's datasets pin)
        raise DataError(f"data.partition = {cfg.partition!r} needs flwr-datasets ({INSTALL_HINT}): {e}",
                        where="data.partition") from None
    p, n, alpha = cfg.partition, cfg.num_clients, float(cfg.dirichlet_alpha)
    if p == "iid":
        return fp.IidPartitioner(n)
    if p == "dirichlet":
        return fp.DirichletPartitioner(n, "key", alpha, min_partition_size=cfg.min_partition_size,
                                       self_balancing=cfg.self_balancing, seed=seed)
    if p == "inner_dirichlet":
        return fp.InnerDirichletPartitioner(list(cfg.partition_sizes), "key", alpha, seed=seed)
    if p == "pathological":
        return fp.PathologicalPartitioner(n, "key", cfg.classes_per_client, cfg.class_assignment, seed=seed)
    if p == "shard":
        return fp.ShardPartitioner(n, "key", cfg.shards_per_client or None, cfg.shard_size or None,
                                   keep_incomplete_shard=cfg.keep_incomplete_shard, seed=seed)
    if p == "natural_id":
        return fp.NaturalIdPartitioner("key")
    if p == "size":
        return fp.SizePartitioner(list(cfg.partition_sizes))
    return getattr(fp, FLOWER[p])(n)


def flower_parts(keys: list[str], cfg: DataConfig, seed: int) -> tuple[list[list[int]], list[str]]:
    """Each client's positions in ``keys`` (sorted) and its name, from the flwr-datasets partitioner.

    ``keys`` is the ``partition_by`` value of each pooled training record. Clients are named
    ``client0..``, but ``natural_id`` names each by its value where that is a usable file name.
    """
    from datasets import Dataset, disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

    partitioner = _partitioner(cfg, seed)
    values = sorted(set(keys))  # as class ids 0..K-1 (InnerDirichletPartitioner needs them so)
    code = {v: i for i, v in enumerate(values)}
    codes = [code[k] for k in keys]
    bars = is_progress_bar_enabled()
    disable_progress_bars()
    caught: list[warnings.WarningMessage] = []
    try:
        # NaturalIdPartitioner draws its own tqdm bar: a partition is not worth one
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("always")
            partitioner.dataset = Dataset.from_dict({"row": list(range(len(keys))), "key": codes}).shuffle(seed=seed)
            count = partitioner.num_partitions
            parts = [sorted(int(i) for i in partitioner.load_partition(c)["row"]) for c in range(count)]
    except ValueError as e:  # flwr-datasets says what does not fit (sizes, alpha, classes ...)
        raise DataError(f"{cfg.partition} partitioner: {e}", where="data.partition") from None
    finally:
        if bars:
            enable_progress_bars()
    for w in caught:  # flwr-datasets' own notes (records left out, redraws); not the libraries' deprecations
        if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            warn(f"{cfg.partition} partitioner: {w.message}")
    names = [f"client{c}" for c in range(count)]
    if cfg.partition == "natural_id":
        ids = [values[partitioner.partition_id_to_natural_id[c]] for c in range(count)]
        if all(_SAFE_NAME.match(i) and i not in (".", "..") for i in ids):
            names = ids
    return parts, names


def follow_shares(train_keys: list[str], train_parts: list[list[int]], test_keys: list[str],
                  seed: int) -> list[list[int]]:
    """Test positions per client: each key's test records cut in the shares of its training records.

    Per key (sorted), the test positions are shuffled with a generator seeded by ``seed`` and cut
    at the rounded cumulative shares; keys held by no client are left out.
    """
    rng = np.random.default_rng(seed)
    owner = np.full(len(train_keys), -1)
    for c, part in enumerate(train_parts):
        owner[part] = c
    held: dict[str, np.ndarray] = {}
    for pos, key in enumerate(train_keys):
        if owner[pos] >= 0:
            held.setdefault(key, np.zeros(len(train_parts)))[owner[pos]] += 1
    by_key: dict[str, list[int]] = {}
    for pos, key in enumerate(test_keys):
        by_key.setdefault(key, []).append(pos)
    out: list[list[int]] = [[] for _ in train_parts]
    dropped = 0
    for key in sorted(by_key):
        members = np.array(by_key[key], dtype=int)
        if key not in held:
            dropped += len(members)
            continue
        shares = held[key] / held[key].sum()
        bounds = np.round(np.cumsum(shares)[:-1] * len(members)).astype(int)
        for c, chunk in enumerate(np.split(rng.permutation(members), bounds)):
            out[c].extend(chunk.tolist())
    if dropped:
        warn(f"{dropped} test record(s) of values no client trains on are held by no client")
    _fill_empty(out)
    return [sorted(p) for p in out]


def _fill_empty(parts: list[list[int]]) -> None:
    """Give every empty client one record taken from the currently largest client."""
    for part in parts:
        if not part:
            donor = max(range(len(parts)), key=lambda c: len(parts[c]))
            if len(parts[donor]) < 2:
                return  # too few records to go round; the caller reports the empty client
            part.append(parts[donor].pop())


def _key(record: Record, by: str) -> str:
    """The record's ``partition_by`` value (a record without a category is its task's own category)."""
    if by == "category":
        return record.category or record.task
    return getattr(record, by)


def flower_partition(tasks: TaskSplits, cfg: DataConfig, seed: int) -> list[ClientData]:
    """Clients from the configured flwr-datasets partitioner over all tasks pooled.

    The partitioner splits the training records by ``cfg.partition_by``; the test records follow
    (:func:`follow_shares`). Records keep pooled order (task by task, as loaded).
    """
    train = [r for tr, _ in tasks.values() for r in tr]
    test = [r for _, te in tasks.values() for r in te]
    if cfg.partition in COUNTED and len(train) < cfg.num_clients:
        raise DataError(f"{len(train)} training records cannot fill {cfg.num_clients} clients",
                        where="data.num_clients")
    train_keys = [_key(r, cfg.partition_by) for r in train]
    test_keys = [_key(r, cfg.partition_by) for r in test]
    train_parts, names = flower_parts(train_keys, cfg, seed)
    test_parts = follow_shares(train_keys, train_parts, test_keys, seed)
    return [ClientData(name, [train[i] for i in tr], [test[i] for i in te])
            for name, tr, te in zip(names, train_parts, test_parts)]


def partition_tasks(tasks: TaskSplits, cfg: DataConfig, seed: int) -> list[ClientData]:
    """The clients of ``cfg.partition`` (uncapped)."""
    if cfg.partition == "natural":
        return natural_partition(tasks)
    return flower_partition(tasks, cfg, seed)


def cap_records(records: list[Record], n: int, seed: int, key: str) -> list[Record]:
    """At most ``n`` records (``n == 0``: all), a seeded subsample that keeps the input order.

    ``key`` (e.g. ``"client0:train"``) makes each client's sample independent of the others.
    """
    if n <= 0 or len(records) <= n:
        return list(records)
    keep = sorted(random.Random(f"{seed}:{key}").sample(range(len(records)), n))
    return [records[i] for i in keep]
