"""The ID/OOD protocols on the real Flan-8 folder (never copied into the repository)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from fedoa.config import DataConfig, RunConfig, load_config
from fedoa.data import load_clients, load_tasks, make_clients
from fedoa.data.records import ClientData, make_record
from fedoa.data.scenario import categories_of, task_categories
from fedoa.errors import ConfigError
from fedoa.evaluation.matrix import (
    EvalPlan,
    SetScores,
    default_plan,
    per_client,
    summarize,
)
from fedoa.evaluation.protocols import load_protocol, within_category_plan
from fedoa.reports.markdown import render_report
from fedoa.reports.results import build_results

FLAN8 = Path(os.environ.get("FEDOA_FLAN8", Path(__file__).resolve().parents[2].parent / "shared" / "data" / "flan8"))

CATEGORIES = {
    "entailment": ["anli", "snli"],
    "paraphrase": ["glue_mrpc", "stsb"],
    "reading_comprehension": ["openbook_qa", "record"],
    "sentiment": ["sentiment140", "sst2"],
}
SIBLING = {
    "snli": "anli", "anli": "snli", "sst2": "sentiment140", "sentiment140": "sst2",
    "glue_mrpc": "stsb", "stsb": "glue_mrpc", "openbook_qa": "record", "record": "openbook_qa",
}
ALL_TASKS = sorted(SIBLING)


@pytest.fixture(scope="module")
def flan8() -> Path:
    assert FLAN8.is_dir(), f"Flan-8 benchmark not found at {FLAN8} (set FEDOA_FLAN8)"
    return FLAN8


def flan_cfg(flan8: Path, protocol: str = "natural", holdout: str = "", **data) -> RunConfig:
    cfg = RunConfig()
    cfg.data = DataConfig.model_validate({**cfg.data.model_dump(), "source": "jsonl", "path": str(flan8), **data})
    cfg.protocol.name = protocol
    cfg.protocol.holdout = holdout
    return cfg


# ----------------------------------------------------------------------------- categories


def test_categories_come_from_the_folders(flan8):
    tasks = load_tasks(flan_cfg(flan8).data, 0)
    task_category = task_categories(tasks)
    assert task_category["record"] == "reading_comprehension"  # its records say read_comp_and_common_sense
    assert {c: sorted(ts) for c, ts in categories_of(task_category).items()} == CATEGORIES


# ----------------------------------------------------------------------------- natural


def test_natural_is_the_old_default(flan8):
    cfg = flan_cfg(flan8, train_per_client=20, test_per_client=10)
    clients, plan = load_protocol(cfg)
    assert clients == load_clients(cfg.data, cfg.data.split_seed)
    assert plan == default_plan(clients)
    assert plan.protocol == "natural" and not plan.ood_groups
    assert sorted(plan.clients) == ALL_TASKS
    for c in plan.clients:
        assert plan.id_set[c] == c
        assert sorted(plan.ood_sets[c]) == sorted(t for t in ALL_TASKS if t != c)


@pytest.mark.parametrize("partition", ["natural", "dirichlet"])
def test_make_clients_agrees_with_load_clients(flan8, partition):
    cfg = flan_cfg(flan8, partition=partition, num_clients=3, train_per_client=30, test_per_client=7)
    tasks = load_tasks(cfg.data, 0)
    assert make_clients(tasks, cfg.data, 0) == load_clients(cfg.data, 0)


# ----------------------------------------------------------------------------- within-category


def test_within_category_ood_is_the_sibling_task_and_all_others(flan8):
    cfg = flan_cfg(flan8, "within-category", test_per_client=12)
    clients, plan = load_protocol(cfg)
    assert sorted(c.name for c in clients) == ALL_TASKS
    assert all(len(c.tasks) == 1 for c in clients)
    assert plan.protocol == "within-category"
    for c in plan.clients:
        assert plan.id_set[c] == c
        assert plan.ood_sets[c] == [SIBLING[c]]  # the headline OOD
        assert plan.ood_groups["sibling"][c] == [SIBLING[c]]
        assert sorted(plan.ood_groups["all"][c]) == sorted(t for t in ALL_TASKS if t != c)
        assert sorted(plan.sets_of(c)) == ALL_TASKS  # every set evaluated once per model
        assert plan.set_category(c) == next(k for k, v in CATEGORIES.items() if c in v)
    assert {name: len(recs) for name, recs in plan.sets.items()} == {t: 12 for t in ALL_TASKS}
    assert all(r.task == name for name, recs in plan.sets.items() for r in recs)


def test_within_category_without_eval_ood_has_no_ood_sets(flan8):
    cfg = flan_cfg(flan8, "within-category", tasks=["sst2", "sentiment140"], test_per_client=3)
    cfg.eval.ood = False
    _, plan = load_protocol(cfg)
    assert all(plan.sets_of(c) == [c] for c in plan.clients)


def test_within_category_needs_siblings_and_one_task_per_client(flan8):
    with pytest.raises(ConfigError, match="sibling"):
        load_protocol(flan_cfg(flan8, "within-category", tasks=["sst2", "snli"]))
    with pytest.raises(ConfigError, match="protocol.name"):
        load_config(None, ["protocol.name=within-category", "data.partition=dirichlet"])
    mixed = [ClientData("c0", [make_record("q?\nOPTIONS:\n- a\n- b", "a", task=t, category="x") for t in "st"])]
    with pytest.raises(ConfigError, match="one task per client"):
        within_category_plan(mixed, {"s": "x", "t": "x"})


# ----------------------------------------------------------------------------- leave-category-out


@pytest.mark.parametrize("holdout", sorted(CATEGORIES))
def test_leave_category_out_holds_out_one_category(flan8, holdout):
    cfg = flan_cfg(flan8, "leave-category-out", holdout, test_per_client=9, train_per_client=15)
    clients, plan = load_protocol(cfg)
    held = CATEGORIES[holdout]
    kept = sorted(t for t in ALL_TASKS if t not in held)
    assert sorted(c.name for c in clients) == kept
    assert all(len(c.train) == 15 and len(c.test) == 9 for c in clients)
    # no client holds any record of the held-out category
    assert not any(r.category == holdout for c in clients for r in c.train + c.test)
    assert plan.protocol == "leave-category-out" and plan.details["holdout"] == holdout
    assert sorted(plan.sets) == ALL_TASKS
    for c in plan.clients:
        assert plan.id_set[c] == c
        assert sorted(plan.ood_sets[c]) == held
    for t in held:
        assert t not in plan.clients
        assert len(plan.sets[t]) == 9 and all(r.task == t and r.category == holdout for r in plan.sets[t])
    # a held-out test set is the very sample the task's client gets under the natural protocol
    natural, _ = load_protocol(flan_cfg(flan8, test_per_client=9, train_per_client=15))
    by_name = {c.name: c for c in natural}
    assert all(plan.sets[t] == by_name[t].test for t in held)
    assert holdout in plan.description


def test_leave_category_out_override_and_errors(flan8):
    cfg = flan_cfg(flan8, "leave-category-out", test_per_client=2, train_per_client=2)
    with pytest.raises(ConfigError, match="protocol.holdout.*required"):
        load_protocol(cfg)
    with pytest.raises(ConfigError, match="unknown category 'poetry'"):
        load_protocol(cfg, holdout="poetry")
    clients, plan = load_protocol(cfg, holdout="sentiment")
    assert plan.details["holdout"] == "sentiment" and len(clients) == 6


# ----------------------------------------------------------------------------- summaries


def _plan_with_groups() -> EvalPlan:
    rec = make_record("q?\nOPTIONS:\n- a\n- b", "a")
    sets = {n: [rec] for n in ("a", "b", "c")}
    return EvalPlan(
        sets=sets, id_set={"a": "a", "b": "b"}, ood_sets={"a": ["b"], "b": ["a"]}, protocol="p",
        ood_groups={"sibling": {"a": ["b"], "b": ["a"]}, "all": {"a": ["b", "c"], "b": ["a", "c"]}},
    )


def test_named_ood_groups_are_summarized_beside_the_headline():
    plan = _plan_with_groups()
    matrix = {"a": {"a": 0.9, "b": 0.5, "c": 0.1}, "b": {"a": 0.4, "b": 0.8, "c": 0.3}}
    s = summarize(matrix, plan)
    assert math.isclose(s["id_accuracy"], 0.85)
    assert math.isclose(s["ood_accuracy"], 0.45)
    assert math.isclose(s["ood_sibling_accuracy"], 0.45)
    assert math.isclose(s["ood_all_accuracy"], ((0.5 + 0.1) / 2 + (0.4 + 0.3) / 2) / 2)
    assert math.isclose(per_client(matrix, plan)["b"]["ood_all_accuracy"], 0.35)
    assert plan.sets_of("a") == ["a", "b", "c"]


def test_results_json_keeps_its_keys_and_names_the_protocol():
    plan = _plan_with_groups()
    scores = {"global": {c: {s: SetScores(options=0.5) for s in plan.sets_of(c)} for c in plan.clients}}
    typed = build_results(RunConfig(), plan, scores, {"rounds": 1}, {"wall_seconds": 1.0})
    results = typed.to_json()
    assert results["summary"]["global"]["id_accuracy"] == 0.5
    assert results["summary"]["global"]["ood_accuracy"] == 0.5
    assert results["protocol"]["name"] == "p"
    assert results["metric"]["headline"] == "options"
    assert results["ood_groups"] == plan.ood_groups
    assert results["set_categories"] == {"a": "", "b": "", "c": ""}
    report = render_report(typed)
    assert "protocol: **p**" in report and "metric: **options**" in report and "sibling 50.0" in report
