"""``fedoa compare``: the table's aggregation by hand, and a tiny resumable end-to-end run."""
from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import pytest

from fedoa.cli import main
from fedoa.compare.runner import parse_methods, parse_seeds, read_results
from fedoa.config import load_config
from fedoa.errors import ConfigError
from fedoa.compare.render import render_compare
from fedoa.reports.results import Results
from fedoa.compare.stats import aggregate, compare_rows
from fedoa.testing import tiny_model_dir

FLAN8 = Path(os.environ.get("FEDOA_FLAN8", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flan8"))


# ----------------------------------------------------------------------------- fabricated runs

TASKS = {"s1": "sent", "s2": "sent", "p1": "para", "p2": "para"}
SIB = {"s1": "s2", "s2": "s1", "p1": "p2", "p2": "p1"}
# sibling accuracies (row model, column test set) per seed: the numbers the hand computation uses
SIBLING_BY_SEED = [
    {("s1", "s2"): 0.6, ("s2", "s1"): 0.4, ("p1", "p2"): 0.3, ("p2", "p1"): 0.1},
    {("s1", "s2"): 0.8, ("s2", "s1"): 0.6, ("p1", "p2"): 0.2, ("p2", "p1"): 0.2},
    {("s1", "s2"): 0.7, ("s2", "s1"): 0.9, ("p1", "p2"): 0.5, ("p2", "p1"): 0.3},
]
ID_ACC = {"s1": 0.9, "s2": 0.7, "p1": 0.6, "p2": 0.4}


def fake_results(method: str, seed: int, kinds: dict[str, dict[str, dict[str, float]]], id_set, ood_sets,
                 ood_groups, set_categories, protocol="within-category", holdout=None) -> Results:
    proto = {"name": protocol, "description": f"{protocol} (fabricated)"}
    if holdout:
        proto["holdout"] = holdout
    return Results.model_validate({
        "method": method, "protocol": proto,
        "metric": {"headline": "options", "description": "option scoring"},
        "clients": list(id_set), "test_sets": {s: 10 for s in set_categories},
        "id_set": id_set, "ood_sets": ood_sets, "ood_groups": ood_groups, "set_categories": set_categories,
        "summary": {k: {"id_accuracy": 0.0, "ood_accuracy": 0.0} for k in kinds},
        "per_client": {}, "matrices": kinds, "communication": {}, "timing": {"wall_seconds": 1.0},
        "config": {"method": method, "seed": seed},
    })


def within_run(method: str, seed: int, personal: bool) -> Results:
    def matrix(shift: float = 0.0):
        m = {c: {s: 0.0 for s in TASKS} for c in TASKS}  # cross-category pairs: 0
        for c in TASKS:
            m[c][c] = ID_ACC[c]
        for (c, s), v in SIBLING_BY_SEED[seed].items():
            m[c][s] = v + shift
        return m

    kinds = {"global": {c: {s: 0.5 for s in TASKS} for c in TASKS}}
    if personal:
        kinds = {"personal": matrix(), **kinds}
    kinds["zero_shot"] = {c: {s: 0.25 for s in TASKS} for c in TASKS}
    sibling = {c: [SIB[c]] for c in TASKS}
    others = {c: [s for s in TASKS if s != c] for c in TASKS}
    return fake_results(method, seed, kinds, {c: c for c in TASKS}, sibling,
                        {"sibling": sibling, "all": others}, dict(TASKS))


def test_aggregation_matches_a_hand_computation(tmp_path):
    runs = []
    for method, personal in (("m1", True), ("m2", False)):
        for seed in range(3):
            path = tmp_path / method / f"seed{seed}" / "results.json"
            path.parent.mkdir(parents=True)
            within_run(method, seed, personal).save(path)
            runs.append((method, seed, "", read_results(path)))  # through a real results.json
    summary = aggregate(runs, ["m1", "m2"], [0, 1, 2])

    assert summary["categories"] == ["para", "sent"]
    # "ood_sibling" equals the headline "ood" and is not repeated; "ood_all" is
    assert summary["groups"] == ["ood", "ood_all", "id"]
    t = summary["table"]
    # hand: sent sibling per seed (0.6+0.4)/2=0.5, (0.8+0.6)/2=0.7, (0.7+0.9)/2=0.8
    sent = t["ood"]["m1"]["personal"]["sent"]
    assert sent["values"] == pytest.approx([0.5, 0.7, 0.8])
    assert sent["mean"] == pytest.approx(2.0 / 3.0)
    assert sent["std"] == pytest.approx(math.sqrt(((0.5 - 2 / 3) ** 2 + (0.7 - 2 / 3) ** 2 + (0.8 - 2 / 3) ** 2) / 2))
    assert sent["std"] == pytest.approx(0.152753, abs=1e-6) and sent["n"] == 3
    para = t["ood"]["m1"]["personal"]["para"]
    assert para["values"] == pytest.approx([0.2, 0.2, 0.4])
    assert (para["mean"], para["std"]) == pytest.approx((0.266667, 0.115470), abs=1e-6)
    # the average is the mean of the categories per seed, then mean/std over seeds
    avg = t["ood"]["m1"]["personal"]["average"]
    assert avg["values"] == pytest.approx([0.35, 0.45, 0.6])
    assert (avg["mean"], avg["std"]) == pytest.approx((0.466667, 0.125831), abs=1e-6)
    # ID: per category mean of the clients' own test sets, identical over seeds
    id_cells = t["id"]["m1"]["personal"]
    assert id_cells["sent"]["mean"] == pytest.approx(0.8) and id_cells["sent"]["std"] == pytest.approx(0.0)
    assert id_cells["para"]["mean"] == pytest.approx(0.5) and id_cells["average"]["mean"] == pytest.approx(0.65)
    # all other tasks: the six (model, test set) pairs whose test set is "sent": 2 siblings + 4 zeros
    assert t["ood_all"]["m1"]["personal"]["sent"]["values"][0] == pytest.approx((0.6 + 0.4) / 6)
    # a method without a personal model, and the zero-shot row
    assert t["ood"]["m2"]["personal"] is None
    assert t["ood"]["m2"]["global"]["average"]["mean"] == pytest.approx(0.5)
    assert t["ood"]["zero_shot"]["zero_shot"]["sent"]["mean"] == pytest.approx(0.25)
    assert t["ood"]["zero_shot"]["zero_shot"]["sent"]["n"] == 3

    md = render_compare(summary)
    assert "protocol: **within-category**" in md and "metric: **options**" in md
    assert "| m1 | personal | 26.7 ± 11.5 | 66.7 ± 15.3 | 46.7 ± 12.6 |" in md
    assert "| m2 | personal |" not in md and "| m2 | global | 50.0 ± 0.0 |" in md  # no row for a kind a method lacks
    assert "| zero-shot | base model | 25.0 ± 0.0 | 25.0 ± 0.0 | 25.0 ± 0.0 |" in md


def test_aggregation_combines_held_out_rotations():
    """Three one-task categories a, b, c; each rotation holds one out."""
    cats = {"a": "A", "b": "B", "c": "C"}
    ood = {"a": 0.3, "b": 0.5, "c": 0.7}  # accuracy of every client model on the held-out task
    runs = []
    for seed, bump in ((0, 0.0), (1, 0.1)):
        for held in cats:
            clients = [t for t in cats if t != held]
            m = {c: {c: 0.8 + bump, held: ood[held] + bump} for c in clients}
            runs.append(("m", seed, cats[held], fake_results(
                "m", seed, {"global": m}, {c: c for c in clients}, {c: [held] for c in clients}, {},
                dict(cats), "leave-category-out", cats[held])))
    summary = aggregate(runs, ["m"], [0, 1])
    g = summary["table"]["ood"]["m"]["global"]
    assert g["A"]["values"] == pytest.approx([0.3, 0.4])  # only the rotation that held A out
    assert g["C"]["mean"] == pytest.approx(0.75)
    assert g["average"]["values"] == pytest.approx([0.5, 0.6])
    assert g["average"]["std"] == pytest.approx(statistics.stdev([0.5, 0.6]))
    # ID of category A: mean over the rotations in which A was a client (holdout B and C)
    assert summary["table"]["id"]["m"]["global"]["A"]["values"] == pytest.approx([0.8, 0.9])
    assert summary["groups"] == ["ood", "id"]

    # seed 1 without its C rotation (pending): no average for that seed rather than one over fewer categories
    partial = aggregate(runs[:-1], ["m"], [0, 1])["table"]["ood"]["m"]["global"]
    assert partial["average"]["values"] == pytest.approx([0.5]) and partial["C"]["values"] == pytest.approx([0.7])
    only_a = aggregate([r for r in runs if r[2] == "A"], ["m"], [0, 1])["table"]["ood"]["m"]["global"]
    assert only_a["average"]["values"] == pytest.approx([0.3, 0.4])  # A is all the group has


def test_paired_average_needs_every_category_on_both_rows():
    # {seed: {group: {category: {observation: outcome}}}}: row b lacks category B (a pending rotation)
    a = {0: {"ood": {"A": {("x", i): i % 2 for i in range(20)}, "B": {("y", i): 1 for i in range(20)}}}}
    b = {0: {"ood": {"A": {("x", i): 0 for i in range(20)}}}}
    cells = compare_rows(a, b, "ood", ["A", "B"])
    assert set(cells) == {"A"} and cells["A"]["difference"] == pytest.approx(0.5)
    b[0]["ood"]["B"] = {("y", i): 0 for i in range(20)}
    cells = compare_rows(a, b, "ood", ["A", "B"])
    assert cells["average"]["difference"] == pytest.approx((0.5 + 1.0) / 2)


def test_one_seed_has_no_std():
    summary = aggregate([("m2", 0, "", within_run("m2", 0, False))], ["m2"], [0])
    cell = summary["table"]["ood"]["m2"]["global"]["sent"]
    assert cell["std"] is None and cell["n"] == 1
    assert "| m2 | global | 50.0 | 50.0 | 50.0 |" in render_compare(summary)


def test_methods_and_seeds_arguments():
    assert parse_methods("fedoa, fedoa") == ["fedoa"]
    with pytest.raises(ConfigError, match="unknown method.*nosuch"):
        parse_methods("fedoa,nosuch")
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("2", base=5) == [5, 6]
    assert parse_seeds("0,4,7") == [0, 4, 7]
    for bad in ("0", "x", "-1,2"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_unknown_method_exits_2_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--methods", "fedoa,nosuch", "--seeds", "1", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "nosuch" in err and "--methods" in err
    assert not out.exists()


# ----------------------------------------------------------------------------- end to end


TINY_TOML = """
[model]
name = {model}
max_length = 64
[lora]
r = 4
alpha = 8
[data]
source = "jsonl"
path = {path}
tasks = ["sst2", "sentiment140", "glue_mrpc", "stsb"]
train_per_client = 4
test_per_client = 3
template = "plain"
[train]
lr = 1e-2
batch_size = 4
micro_batch_size = 4
[fed]
rounds = 1
personal_start_round = 1
[eval]
batch_size = 8
[protocol]
name = "within-category"
"""


def tiny_config_file(tmp_path: Path, protocol: str = "within-category") -> Path:
    """TINY_TOML with this machine's Flan-8 and tiny model, written to ``tmp_path/tiny.toml``."""
    config = tmp_path / "tiny.toml"
    toml = TINY_TOML.format(path=json.dumps(str(FLAN8)), model=json.dumps(str(tiny_model_dir())))
    config.write_text(toml.replace('"within-category"', json.dumps(protocol)))
    return config


METHODS = ("fedit", "feddpa", "fedoa")  # no personal model; forward hooks on the shared model; FedOA


def test_tiny_compare_end_to_end_is_resumable_and_leak_free(tmp_path, capsys):
    assert FLAN8.is_dir(), f"Flan-8 benchmark not found at {FLAN8} (set FEDOA_FLAN8)"
    config = tiny_config_file(tmp_path)
    out = tmp_path / "cmp"
    argv = ["compare", "--methods", ",".join(METHODS), "--seeds", "2", "--config", str(config),
            "--out", str(out), "--quiet"]
    assert main(argv) == 0
    capsys.readouterr()

    paths = {(m, s): out / "runs" / m / f"seed{s}" / "results.json" for m in METHODS for s in (0, 1)}
    results = {k: json.loads(p.read_text()) for k, p in paths.items()}
    for (m, s), r in results.items():
        assert r["method"] == m and r["config"]["seed"] == s and r["protocol"]["name"] == "within-category"
        assert r["ood_sets"] == {"sst2": ["sentiment140"], "sentiment140": ["sst2"],
                                 "glue_mrpc": ["stsb"], "stsb": ["glue_mrpc"]}
    assert "personal" not in results[("fedit", 0)]["summary"]
    # the zero-shot model is the same base model in every run
    zs = {json.dumps(r["matrices"]["zero_shot"], sort_keys=True) for r in results.values()}
    assert len(zs) == 1

    summary = json.loads((out / "compare.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["ran"] * 6
    # every run says what one client sent per round (fedit and fedoa upload the global adapter; local nothing)
    assert {r["method"]: r["bytes_up_per_client_round"] for r in summary["runs"]} == {
        r["method"]: results[(r["method"], r["seed"])]["communication"]["bytes_up_per_client_round"] for r in summary["runs"]}
    assert summary["protocol"]["name"] == "within-category" and summary["metric"]["headline"] == "options"
    assert summary["categories"] == ["paraphrase", "sentiment"] and summary["seeds"] == [0, 1]
    md = (out / "compare.md").read_text()
    assert "protocol: **within-category**" in md and "metric: **options**" in md
    assert "| wall s | upload per client-round |" in md
    assert "| fedit | personal |" not in md and "| fedoa | mixed (P+G per input) |" in md
    assert (out / "compare.png").stat().st_size > 1000
    # paired differences: FedOA's personal and mixed models against every other row, with intervals
    paired = {(tuple(p["a"]), tuple(p["b"]), p["group"]): p["cells"] for p in summary["paired"]}
    cell = paired[(("fedoa", "personal"), ("fedit", "global"), "ood")]["average"]
    assert cell["low"] <= cell["difference"] <= cell["high"] and cell["seeds"] == 2
    assert any(a == ("fedoa", "mixed") and group == "id" for a, _, group in paired)
    assert "## Paired differences" in md
    # fedoa compare draws each seed's training subsets (the config does not name the key) and says so
    assert summary["config"]["data"]["train_subset_seed"] == "run"
    assert "each client's training subset" in md

    # the global step is the same computation in FedIT, FedDPA and FedOA: run once, reused after
    lines = [json.loads(line) for line in (out / "runs" / "fedoa" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert all(line.get("reused") for line in lines if line["phase"] == "global")
    assert not any(line.get("reused") for line in lines if line["phase"] == "personal")
    for seed in (0, 1):
        assert (
            (out / "runs" / "fedit" / f"seed{seed}" / "adapters" / "global" / "adapter_model.safetensors").read_bytes()
            == (out / "runs" / "fedoa" / f"seed{seed}" / "adapters" / "global" / "adapter_model.safetensors").read_bytes()
        )

    # nothing leaks from earlier runs (FedDPA's hooks included) through the shared model, and the
    # memoized global steps are exact: the last run alone, in a fresh session with its own freshly
    # loaded model and no memo, gives the same matrices
    from fedoa.runtime.inprocess import run_simulation

    alone_cfg = load_config(out / "runs" / "fedoa" / "seed1" / "config.toml")
    alone = run_simulation(alone_cfg, tmp_path / "alone", progress=False, reports=False).to_json()
    assert alone["matrices"] == results[("fedoa", 1)]["matrices"]

    # a second invocation redoes nothing; a run whose results are gone is redone alone
    mtimes = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    assert main(argv) == 0
    assert {k: p.stat().st_mtime_ns for k, p in paths.items()} == mtimes
    assert [r["status"] for r in json.loads((out / "compare.json").read_text())["runs"]] == ["reused"] * 6
    paths[("fedoa", 0)].unlink()
    assert main(argv) == 0
    statuses = [r["status"] for r in json.loads((out / "compare.json").read_text())["runs"]]
    assert statuses == ["reused", "reused", "ran", "reused", "reused", "reused"]  # seed-major order
    assert json.loads(paths[("fedoa", 0)].read_text())["matrices"] == results[("fedoa", 0)]["matrices"]

    # --report-only tabulates what finished and names what never ran; it runs and fails nothing
    report_argv = argv[:2] + [argv[2] + ",local"] + argv[3:] + ["--report-only"]
    assert main(report_argv) == 0
    runs = json.loads((out / "compare.json").read_text())["runs"]
    assert {(r["method"], r["status"]) for r in runs} == {*((m, "finished") for m in METHODS), ("local", "not run")}
    assert "FAILED" not in capsys.readouterr().out
    assert not (out / "runs" / "local").exists()


def test_leave_category_out_rotates_the_held_out_category(tmp_path):
    from fedoa.compare.runner import run_compare

    assert FLAN8.is_dir(), f"Flan-8 benchmark not found at {FLAN8} (set FEDOA_FLAN8)"
    config = tiny_config_file(tmp_path, "leave-category-out")
    cfg = load_config(config, ["data.tasks=['sst2','glue_mrpc','snli']"])
    summary = run_compare(cfg, ["fedit"], [0], tmp_path / "lco", progress=False)

    assert summary["holdouts"] == ["entailment", "paraphrase", "sentiment"]
    for held, task in (("entailment", "snli"), ("paraphrase", "glue_mrpc"), ("sentiment", "sst2")):
        r = json.loads((tmp_path / "lco" / "runs" / "fedit" / "seed0" / f"holdout-{held}" / "results.json").read_text())
        assert r["protocol"]["holdout"] == held and r["config"]["protocol"]["holdout"] == held
        assert task not in r["clients"] and len(r["clients"]) == 2
        assert all(v == [task] for v in r["ood_sets"].values())
    # each category's OOD cell comes from the rotation that held it out
    ood = summary["table"]["ood"]["fedit"]["global"]
    assert all(ood[c]["n"] == 1 for c in ("entailment", "paraphrase", "sentiment"))
    md = (tmp_path / "lco" / "compare.md").read_text()
    assert "protocol: **leave-category-out**" in md and "entailment, paraphrase, sentiment" in md


def test_method_variants_parse_and_configure():
    from fedoa.compare.runner import parse_methods, run_folder_name, variant_config
    from fedoa.config import RunConfig

    labels = parse_methods("fedit,fedoa[fedoa.feature=answer;fedoa.regular_weight=1],ditto")
    assert labels == ["fedit", "fedoa[fedoa.feature=answer;fedoa.regular_weight=1]", "ditto"]
    cfg = variant_config(RunConfig(), labels[1])
    assert cfg.method == "fedoa" and cfg.fedoa.feature == "answer" and cfg.fedoa.regular_weight == 1.0
    assert "/" not in run_folder_name(labels[1]) and "[" not in run_folder_name(labels[1])
    with pytest.raises(ConfigError, match="fedoa.featur"):
        variant_config(RunConfig(), "fedoa[fedoa.featur=x]")
    with pytest.raises(ConfigError, match="unknown method"):
        parse_methods("fedoa,nosuch[fedoa.feature=answer]")


def test_a_budget_starts_no_run_that_the_longest_run_so_far_says_would_not_fit(tmp_path):
    from fedoa.compare.runner import run_compare

    config = tiny_config_file(tmp_path)
    cfg = load_config(config, ["data.tasks=['sst2','sentiment140']", "eval.zero_shot=false"])
    out = tmp_path / "cmp"
    run_compare(cfg, ["fedit"], [0], out, progress=False)
    path = out / "runs" / "fedit" / "seed0" / "results.json"
    recorded = json.loads(path.read_text())
    recorded["timing"]["wall_seconds"] = 1e6  # as if that run had taken longer than the whole budget
    path.write_text(json.dumps(recorded))
    summary = run_compare(cfg, ["fedit", "local"], [0], out, progress=False, budget=3600)
    assert {r["method"]: r["status"] for r in summary["runs"]} == {"fedit": "reused", "local": "not started"}
    assert not summary["complete"] and not (out / "runs" / "local").exists()
    assert "not started" in (out / "compare.md").read_text()


def test_a_run_that_diverges_is_recorded_as_failed_and_the_others_still_run(tmp_path):
    from fedoa.compare.runner import run_compare

    config = tiny_config_file(tmp_path)
    # a float16 base and, for one variant, an absurd learning rate: its first step overflows the next
    cfg = load_config(config, ["data.tasks=['sst2','sentiment140']", "eval.zero_shot=false", "model.dtype='float16'",
                               "train.batch_size=2", "train.micro_batch_size=2"])
    out = tmp_path / "cmp"
    summary = run_compare(cfg, ["hot=fedit[train.lr=1e30]", "local"], [0], out, progress=False)
    status = {r["method"]: r for r in summary["runs"]}
    assert status["hot"]["status"] == "failed" and "non-finite training loss" in status["hot"]["error"]
    traceback = (out / "runs" / "hot" / "seed0" / "error.txt").read_text()  # for the user to read
    assert traceback.startswith("Traceback") and "non-finite training loss" in traceback
    assert status["local"]["status"] == "ran" and (out / "runs" / "local" / "seed0" / "results.json").is_file()
    assert not summary["complete"] and "failed" in (out / "compare.md").read_text()


def test_runs_with_unequal_client_ranks_share_one_resident_model():
    from fedoa.compare.runner import model_key
    from fedoa.testing import tiny_config

    cfg = tiny_config()
    mixed = tiny_config(lora={"client_ranks": {"a": 2}})
    wider = tiny_config(lora={"r": 8})
    assert model_key(mixed) == model_key(cfg) != model_key(wider)
