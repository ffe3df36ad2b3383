"""ID/OOD protocols: which clients a run has and which test sets each client's models meet.

The FedOA paper does not state which distribution shift its table measures, so the plausible
protocols are all offered (``[protocol] name``) and every report names the one used:

- ``natural``: the data's own clients (one task per client, or a Dirichlet split); ID is a
  client's own test data, OOD is every other client's test data.
- ``within-category``: one task per client; OOD (headline) is the *sibling* tasks of the same
  category (Flan-8: snli<->anli, sst2<->sentiment140, glue_mrpc<->stsb, openbook_qa<->record),
  also reported over *all* other tasks (groups ``sibling`` and ``all``).
- ``leave-category-out``: the clients hold the tasks of every category but one (``holdout``);
  OOD is the held-out category's test data, which belongs to no client. ``fedoa compare``
  rotates the held-out category over all of them.

Categories come from the records (the jsonl loader takes them from the category folders, so
siblings are derived from the folder layout); a record without a category counts as a category
of its own task.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from fedoa.data import TaskSplits, load_clients, load_tasks, make_clients
from fedoa.data.partition import cap_records
from fedoa.data.records import ClientData
from fedoa.errors import ConfigError, DataError
from fedoa.evaluation.matrix import EvalPlan, default_plan

if TYPE_CHECKING:
    from fedoa.config import RunConfig

PROTOCOLS = ("natural", "within-category", "leave-category-out")

DESCRIPTIONS = {
    "natural": "ID: the client's own test data; OOD: every other client's test data.",
    "within-category": (
        "one task per client; ID: the client's own task; OOD (headline): the sibling task(s) of "
        "the same category; 'ood_all': every other task."
    ),
    "leave-category-out": (
        "clients hold the tasks of every category but the held-out one; ID: the client's own "
        "test data; OOD: the held-out category's test data (held by no client)."
    ),
}


# ----------------------------------------------------------------------------- categories


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


# ----------------------------------------------------------------------------- clients


# ----------------------------------------------------------------------------- plans


def within_category_plan(clients: list[ClientData], task_category: dict[str, str], ood: bool = True) -> EvalPlan:
    """One task per client; OOD groups ``sibling`` (same category, the headline) and ``all``."""
    names = [c.name for c in clients]
    cat = {}
    for c in clients:
        if len(c.tasks) != 1:
            raise ConfigError(
                f"client {c.name!r} holds {len(c.tasks)} tasks; 'within-category' needs one task "
                "per client (data.partition = 'natural')",
                where="protocol.name",
            )
        cat[c.name] = task_category[next(iter(c.tasks))]
    siblings = {n: [m for m in names if m != n and cat[m] == cat[n]] for n in names}
    if ood and not any(siblings.values()):
        raise ConfigError(
            "no category holds two or more tasks, so no client has a sibling task "
            f"(categories: {sorted(set(cat.values()))})",
            where="protocol.name",
        )
    others = {n: [m for m in names if m != n] for n in names}
    if not ood:
        siblings = {n: [] for n in names}
        others = {n: [] for n in names}
    return EvalPlan(
        sets={c.name: c.test for c in clients},
        id_set={n: n for n in names},
        ood_sets=siblings,
        protocol="within-category",
        description=DESCRIPTIONS["within-category"],
        ood_groups={"sibling": siblings, "all": others},
        details={"ood": "sibling", "categories": {n: cat[n] for n in names}},
    )


def leave_category_out_plan(
    clients: list[ClientData], heldout: dict[str, list], holdout: str, ood: bool = True
) -> EvalPlan:
    """ID: each client's own test data; OOD: every held-out test set (named by its task)."""
    names = [c.name for c in clients]
    clash = sorted(set(names) & set(heldout))
    if clash:
        raise DataError(f"held-out test sets {clash} have the names of clients", where="protocol.holdout")
    sets = {c.name: c.test for c in clients}
    sets.update(heldout)
    return EvalPlan(
        sets=sets,
        id_set={n: n for n in names},
        ood_sets={n: list(heldout) if ood else [] for n in names},
        protocol="leave-category-out",
        description=DESCRIPTIONS["leave-category-out"].replace(
            "the held-out category", f"the held-out category {holdout!r}"
        ),
        details={"holdout": holdout, "heldout_tasks": list(heldout)},
    )


# ----------------------------------------------------------------------------- entry points


def holdout_categories(cfg: RunConfig) -> list[str]:
    """The categories of the configured data (what leave-category-out can hold out)."""
    return list(categories_of(task_categories(load_tasks(cfg.data, cfg.data.split_seed))))


def load_protocol(cfg: RunConfig, holdout: str | None = None) -> tuple[list[ClientData], EvalPlan]:
    """The clients and the evaluation plan of ``cfg.protocol`` (``holdout`` overrides the
    configured held-out category; ``eval.extra_ood = false`` drops the extra OOD groups)."""
    clients, plan = _load_protocol(cfg, holdout)
    return clients, plan if cfg.eval.extra_ood else plan.headline_only()


def _load_protocol(cfg: RunConfig, holdout: str | None) -> tuple[list[ClientData], EvalPlan]:
    name = cfg.protocol.name
    seed = cfg.data.split_seed
    if name == "natural":
        clients = load_clients(cfg.data, seed)
        return clients, default_plan(clients, ood=cfg.eval.ood)
    tasks = load_tasks(cfg.data, seed)
    task_category = task_categories(tasks)
    if name == "within-category":
        clients = make_clients(tasks, cfg.data, seed)
        return clients, within_category_plan(clients, task_category, ood=cfg.eval.ood)
    if name == "leave-category-out":
        holdout = cfg.protocol.holdout if holdout is None else holdout
        by_category = categories_of(task_category)
        if not holdout:
            raise ConfigError(
                f"is required for 'leave-category-out'; one of: {', '.join(by_category)}",
                where="protocol.holdout",
            )
        if holdout not in by_category:
            raise ConfigError(
                f"unknown category {holdout!r}; one of: {', '.join(by_category)}", where="protocol.holdout"
            )
        if len(by_category) < 2:
            raise ConfigError("needs data of at least two categories", where="protocol.holdout")
        kept = {t: v for t, v in tasks.items() if task_category[t] != holdout}
        clients = make_clients(kept, cfg.data, seed)
        heldout = {
            t: cap_records(tasks[t][1], cfg.data.test_per_client, seed, f"{t}:test")
            for t in by_category[holdout]
        }
        empty = [t for t, recs in heldout.items() if not recs]
        if empty:
            raise DataError(f"held-out task(s) {empty} have no test records", where="data")
        return clients, leave_category_out_plan(clients, heldout, holdout, ood=cfg.eval.ood)
    raise ConfigError(f"unknown protocol {name!r}; one of: {', '.join(PROTOCOLS)}", where="protocol.name")
