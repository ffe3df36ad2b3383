"""An unlabeled pool of prompts held by the server (the data PerAda distils on).

Sources (``perada.pool``):
- ``unused_train``: training records of the clients' tasks that no client holds (what
  ``data.train_per_client`` leaves over), answers dropped. Test records never enter it (an
  instruction that is also in a test set is left out), nor do the held-out category's tasks under
  leave-category-out. The pool is from the clients' own task distributions: closer to them than
  PerAda's own server data (CIFAR-100 for CIFAR-10 clients).
- ``file``: the ``instruction`` of every line of a JSONL file, or of every ``*.jsonl`` file under
  a folder; other fields (an ``output`` too) are ignored.

At most ``size`` prompts, a draw seeded by ``data.split_seed`` (the same pool in every run of the
same data, whatever the run seed).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from fedoa.data.partition import cap_records
from fedoa.data.records import Record
from fedoa.errors import ConfigError, DataError

if TYPE_CHECKING:
    from fedoa.config import RunConfig


def unused_train(cfg: RunConfig) -> list[Record]:
    """Training records of the clients' tasks held by no client and absent from every test set."""
    from fedoa.data import load_tasks
    from fedoa.data.scenario import build_scenario

    scenario = build_scenario(cfg)
    tasks = load_tasks(cfg.data, cfg.data.split_seed)
    held = {(r.instruction, r.output) for c in scenario.clients for r in c.train}
    tested = {r.instruction for c in scenario.clients for r in c.test}
    tested |= {r.instruction for recs in scenario.heldout.values() for r in recs}
    client_tasks = {t for c in scenario.clients for t in c.tasks}
    return [r for t, (train, _) in tasks.items() if t in client_tasks for r in train
            if (r.instruction, r.output) not in held and r.instruction not in tested]


def file_prompts(path: str) -> list[Record]:
    """Records with the ``instruction`` of each JSON line (no answer) of a file or folder."""
    root = Path(path).expanduser()
    files = sorted(root.rglob("*.jsonl")) if root.is_dir() else [root]
    if not root.exists() or not files:
        raise DataError("no JSONL file found", where=str(root))
    out = []
    for file in files:
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line).get("instruction")
            except (ValueError, AttributeError):
                raise DataError("not a JSON object", where=f"{file}:{n}") from None
            if not isinstance(text, str) or not text.strip():
                raise DataError("field 'instruction' is missing or empty", where=f"{file}:{n}")
            out.append(Record(text, ""))
    return out


def unlabeled_pool(cfg: RunConfig, source: str, path: str, size: int) -> list[str]:
    """The pool's instructions (at most ``size``; 0: all)."""
    if source == "file":
        if not path:
            raise ConfigError("is required for perada.pool = 'file'", where="perada.pool_path")
        records = file_prompts(path)
    elif source == "unused_train":
        records = unused_train(cfg)
    else:
        raise ConfigError(f"unknown pool {source!r}", where="perada.pool")
    if not records:
        raise DataError(f"the server's unlabeled pool ({source}) is empty: every training record is held by a "
                        "client (lower data.train_per_client, or use perada.pool = 'file')", where="perada.pool")
    return [r.instruction for r in cap_records(records, size, cfg.data.split_seed, "server-pool")]
