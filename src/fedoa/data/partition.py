"""Turning task splits into federated clients."""
from __future__ import annotations

import random

import numpy as np

from fedoa.data.records import ClientData, Record
from fedoa.errors import DataError

TaskSplits = dict[str, tuple[list[Record], list[Record]]]

# Redraws of the whole Dirichlet split before falling back to moving records (see below).
MAX_REDRAWS = 20


def natural_partition(tasks: TaskSplits) -> list[ClientData]:
    """One client per task (the FedOA setting: each client holds one domain)."""
    return [ClientData(name, list(train), list(test)) for name, (train, test) in tasks.items()]


def _cut(indices: np.ndarray, proportions: np.ndarray) -> list[np.ndarray]:
    """Split ``indices`` into consecutive parts whose sizes follow ``proportions``."""
    bounds = np.round(np.cumsum(proportions)[:-1] * len(indices)).astype(int)
    return np.split(indices, bounds)


def _by_label(records: list[Record]) -> dict[str, np.ndarray]:
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r.output, []).append(i)
    return {label: np.array(idx, dtype=int) for label, idx in groups.items()}


def _draw(rng: np.random.Generator, train_groups: dict[str, np.ndarray],
          test_groups: dict[str, np.ndarray], num_clients: int,
          alpha: float) -> tuple[list[list[int]], list[list[int]]]:
    """One Dirichlet label split: per label, client shares p ~ Dir(alpha), used for both splits."""
    train_parts: list[list[int]] = [[] for _ in range(num_clients)]
    test_parts: list[list[int]] = [[] for _ in range(num_clients)]
    empty = np.array([], dtype=int)
    for label in sorted(set(train_groups) | set(test_groups)):
        p = rng.dirichlet(np.full(num_clients, alpha))
        for groups, parts in ((train_groups, train_parts), (test_groups, test_parts)):
            members = rng.permutation(groups.get(label, empty))
            for client, chunk in enumerate(_cut(members, p)):
                parts[client].extend(chunk.tolist())
    return train_parts, test_parts


def _fill_empty(parts: list[list[int]]) -> None:
    """Give every empty client one record taken from the currently largest client."""
    for client, part in enumerate(parts):
        if not part:
            donor = max(range(len(parts)), key=lambda c: len(parts[c]))
            if len(parts[donor]) < 2:
                return  # too few records to go round; the caller reports the empty client
            part.append(parts[donor].pop())


def dirichlet_partition(tasks: TaskSplits, num_clients: int, alpha: float,
                        seed: int) -> list[ClientData]:
    """Label-skewed clients ``client0..`` over all tasks pooled (labels = record outputs).

    For each label, client shares are drawn from Dirichlet(alpha) with a seeded numpy Generator;
    the label's train and test records are shuffled and cut by the same shares, so each client's
    test set follows its own label mix. Small alpha can leave a client without training data:
    the whole split is then redrawn (up to ``MAX_REDRAWS`` times), and if that still fails, each
    empty client receives one record moved from the largest client. Test sets get the same
    move-one fix so no client is left without evaluation data. Records keep pooled order.
    """
    train = [r for tr, _ in tasks.values() for r in tr]
    test = [r for _, te in tasks.values() for r in te]
    if len(train) < num_clients:
        raise DataError(
            f"{len(train)} training records cannot fill {num_clients} clients",
            where="data.num_clients",
        )
    rng = np.random.default_rng(seed)
    train_groups, test_groups = _by_label(train), _by_label(test)
    for _ in range(MAX_REDRAWS):
        train_parts, test_parts = _draw(rng, train_groups, test_groups, num_clients, alpha)
        if all(train_parts):
            break
    _fill_empty(train_parts)
    _fill_empty(test_parts)
    return [
        ClientData(f"client{c}", [train[i] for i in sorted(tr)], [test[i] for i in sorted(te)])
        for c, (tr, te) in enumerate(zip(train_parts, test_parts))
    ]


def cap_records(records: list[Record], n: int, seed: int, key: str) -> list[Record]:
    """At most ``n`` records (``n == 0``: all), a seeded subsample that keeps the input order.

    ``key`` (e.g. ``"client0:train"``) makes each client's sample independent of the others.
    """
    if n <= 0 or len(records) <= n:
        return list(records)
    keep = sorted(random.Random(f"{seed}:{key}").sample(range(len(records)), n))
    return [records[i] for i in keep]
