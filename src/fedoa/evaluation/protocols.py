"""ID/OOD protocols: which test sets count as ID and as OOD for each client's models.

The clients themselves come from the data layer (:mod:`fedoa.data.scenario`).

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

from typing import TYPE_CHECKING, Any

from fedoa.data.records import ClientData, Record
from fedoa.data.scenario import Scenario, build_scenario
from fedoa.errors import ConfigError, DataError
from fedoa.evaluation.matrix import EvalPlan, default_plan

if TYPE_CHECKING:
    from fedoa.config import RunConfig

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


def plan_for(cfg: RunConfig, scenario: Scenario) -> EvalPlan:
    """The evaluation plan of ``cfg.protocol`` over a scenario (``eval.extra_ood = false`` drops
    the extra OOD groups)."""
    name, ood = cfg.protocol.name, cfg.eval.ood
    if name == "natural":
        plan = default_plan(scenario.clients, ood=ood)
    elif name == "within-category":
        plan = within_category_plan(scenario.clients, scenario.task_category, ood=ood)
    else:
        plan = leave_category_out_plan(scenario.clients, scenario.heldout, scenario.holdout, ood=ood)
    return plan if cfg.eval.extra_ood else plan.headline_only()


def load_protocol(cfg: RunConfig, holdout: str | None = None) -> tuple[list[ClientData], EvalPlan]:
    """The clients and the evaluation plan of ``cfg`` (``holdout`` overrides ``protocol.holdout``)."""
    scenario = build_scenario(cfg, holdout)
    return scenario.clients, plan_for(cfg, scenario)


# ----------------------------------------------------------------------------- plans from descriptions


def stand_ins(pairs: list[list[str]], size: int) -> list[Record]:
    """Records that stand for a test set the server never sees: right size, tasks, categories."""
    recs = [Record("", "", (), task, category) for task, category in pairs] or [Record("", "")]
    return [recs[i % len(recs)] for i in range(size)]


def plan_from_reports(cfg: RunConfig, reports: dict[str, dict[str, Any]]) -> EvalPlan:
    """The plan of a deployment, built by the protocol's own plan builder from what the nodes
    reported about their test sets (sizes, tasks, categories; the server never sees records):
    the same plan ``fedoa run`` makes from the same data.

    A client's ID set is its node's own test data; every other set must be readable by the node
    (from its eval-path). Without any eval-path on any node only ID is evaluated.
    """
    names = sorted(reports)
    sizes: dict[str, int] = {}
    pairs: dict[str, list[list[str]]] = {}

    def note(name: str, desc: dict[str, Any], who: str) -> None:
        if name in sizes and sizes[name] != desc["size"]:
            raise DataError(f"test set {name!r} has {sizes[name]} records on one node but {desc['size']} on "
                              f"{who!r}: every node must read the same shared test files")
        sizes[name] = desc["size"]
        pairs.setdefault(name, desc["pairs"])

    for c in names:
        note(c, reports[c]["test"], c)
    for c in names:
        for name, desc in reports[c]["sets"].items():
            note(name, desc, c)
    clients = [ClientData(c, stand_ins(reports[c]["train-pairs"], len(reports[c]["train-pairs"])),
                          stand_ins(pairs[c], sizes[c])) for c in names]
    any_shared = any(reports[c]["sets"] for c in names)
    ood = cfg.eval.ood and any_shared
    name = cfg.protocol.name
    if name == "natural":
        plan = default_plan(clients, ood=ood)
    elif name == "within-category":
        task_category = {t: (cat or t) for ps in pairs.values() for t, cat in ps}
        for c in clients:
            for r in c.train:
                task_category.setdefault(r.task, r.category or r.task)
        plan = within_category_plan(clients, task_category, ood=ood)
    else:
        holdout = cfg.protocol.holdout
        if not holdout:
            raise DataError("protocol 'leave-category-out' needs protocol.holdout in a deployment")
        heldout = {s: stand_ins(pairs[s], sizes[s]) for s in sizes
                   if s not in reports and {(cat or t) for t, cat in pairs[s]} == {holdout}}
        if ood and not heldout:
            raise DataError(f"no node's eval-path holds a test set of the held-out category {holdout!r}")
        plan = leave_category_out_plan(clients, heldout, holdout, ood=ood)
    if not cfg.eval.extra_ood:
        plan = plan.headline_only()
    if cfg.eval.ood and not any_shared:
        plan.description += " OOD not evaluated: no node has an eval-path with shared test sets."
    for c in plan.clients:
        missing = [s for s in plan.sets_of(c) if s not in {c} | set(reports[c]["sets"])]
        if missing:
            raise DataError(f"the node of client {c!r} cannot read test set(s) {missing}: give it an eval-path "
                              "that holds every client's test file (<category>/<task>_test.jsonl)")
    return plan
