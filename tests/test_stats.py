"""The comparison's statistics: the record-clustered paired bootstrap (its coverage on simulated
outcomes with a known answer), uninformative categories, and seeds that draw their own training data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedoa.compare.render import render_compare
from fedoa.compare.stats import aggregate, compare_rows, paired_difference, uninformative_categories
from fedoa.config import RunConfig, load_config
from fedoa.reports.results import Results

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- coverage, known answer


def simulate(rng: np.random.Generator, sims: int, records: int, clients: int, seeds: int,
             p_a: float, p_b: float, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes ``[sims, seeds, records * clients]`` of models A and B, with planted clustering: each
    record has one outcome per model that every client model and seed repeats with probability
    ``rho`` (otherwise a fresh draw). Each outcome is still 1 with probability p_a (p_b), so the true
    accuracy difference is p_a - p_b."""
    def side(p: float) -> np.ndarray:
        record = rng.random((sims, 1, records, 1)) < p
        shape = (sims, seeds, records, clients)
        return np.where(rng.random(shape) < rho, record, rng.random(shape) < p).reshape(sims, seeds, -1)

    return side(p_a).astype(float), side(p_b).astype(float)


def test_record_bootstrap_covers_a_planted_difference_and_the_pair_bootstrap_does_not():
    """200 simulated comparisons, 100 records each scored by 6 client models under 3 seeds, true
    difference +10 points: the 95% interval that resamples records holds the truth in >= 90% of
    them; the one that resamples (client, record) pairs as if independent (the old statistic) is
    too narrow and holds it far less often."""
    sims, records, clients, seeds = 200, 100, 6, 3
    truth = 0.45 - 0.35
    a, b = simulate(np.random.default_rng(7), sims, records, clients, seeds, 0.45, 0.35, rho=0.8)
    record_of = np.repeat(np.arange(records), clients)  # observation -> the record it scored
    by_record = [paired_difference(a[i], b[i], record_of, seed=i, resamples=1000) for i in range(sims)]
    by_pair = [paired_difference(a[i], b[i], seed=i, resamples=1000) for i in range(sims)]

    def coverage(results: list[dict]) -> float:
        return float(np.mean([r["low"] <= truth <= r["high"] for r in results]))

    print(f"coverage: records {coverage(by_record):.3f}, pairs {coverage(by_pair):.3f}")
    assert coverage(by_record) >= 0.90
    assert coverage(by_pair) <= 0.80
    assert by_record[0]["records"] == records and by_record[0]["observations"] == records * clients
    width = np.mean([r["high"] - r["low"] for r in by_record]) / np.mean([r["high"] - r["low"] for r in by_pair])
    assert width > 1.5  # six correlated scores of one record are worth far less than six records


def test_each_category_weighs_the_same_and_records_move_whole():
    # category X: 4 records, each scored twice (A right on both scores of records 0 and 1: +0.5);
    # category Y: 2 records scored once (A right on record 0 only: +0.5 ... then -1 on record 1: -0.25)
    a = np.array([[1, 1, 1, 1, 0, 0, 0, 0, 1, 0]], dtype=float)
    b = np.array([[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]], dtype=float)
    records = ["x0", "x0", "x1", "x1", "x2", "x2", "x3", "x3", "y0", "y1"]
    strata = ["X"] * 8 + ["Y"] * 2
    d = paired_difference(a, b, records, strata)
    assert d["difference"] == pytest.approx((0.5 + 0.0) / 2)  # X: +0.5, Y: (1 - 1) / 2 = 0
    assert d["records"] == 6 and d["observations"] == 10
    assert d["low"] <= d["difference"] <= d["high"]
    # no variation anywhere: the interval is the point
    same = paired_difference(a, a, records, strata)
    assert (same["low"], same["difference"], same["high"]) == (0.0, 0.0, 0.0) and not same["distinguishable"]


# ----------------------------------------------------------------------------- uninformative categories


def rows_of(outcomes: dict[str, dict[str, list[int]]]) -> dict:
    """row -> seed 0 -> "ood" -> category -> {(holdout, client, set, i): outcome}; two client models per record."""
    return {
        (name, "personal"): {0: {"ood": {cat: {("", client, f"{cat}-set", i): hit for i, hit in enumerate(hits)
                                               for client in ("c1", "c2")}
                                         for cat, hits in cats.items()}}}
        for name, cats in outcomes.items()
    }


def test_a_category_every_model_answers_alike_is_marked_and_kept_out_of_the_average():
    same = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]  # every model: the same outcome on every record of U
    rows = rows_of({
        "m1": {"U": same, "V": [1] * 10},
        "m2": {"U": same, "V": [1] * 5 + [0] * 5},
        "m3": {"U": same, "V": [0] * 10},
    })
    assert uninformative_categories(rows, {"ood": ["U", "V"]}) == {"ood": ["U"]}
    cells = compare_rows(rows[("m1", "personal")], rows[("m2", "personal")], "ood", ["U", "V"], ["U"])
    assert cells["U"]["uninformative"] and cells["U"]["difference"] == 0.0
    assert cells["average"]["difference"] == pytest.approx(0.5)  # V alone, not (0 + 0.5) / 2
    assert cells["average"]["records"] == 10  # each record scored by two client models counts once
    # one model that answers one record of U differently makes U informative again
    rows[("m3", "personal")][0]["ood"]["U"][("", "c1", "U-set", 0)] = 0
    assert uninformative_categories(rows, {"ood": ["U", "V"]}) == {}


def results_with_records(method: str, hits: dict[str, str]) -> Results:
    """A within-category run of two one-client categories (p, s) whose global model scored the
    sibling set's records as ``hits`` (set -> '0'/'1' per record)."""
    sets = {"p1": "para", "s1": "sent"}
    acc = {s: h.count("1") / len(h) for s, h in hits.items()}
    return Results.model_validate({
        "method": method, "protocol": {"name": "within-category", "description": "fabricated"},
        "metric": {"headline": "options", "description": "option scoring"},
        "clients": list(sets), "test_sets": {s: 4 for s in sets}, "id_set": {c: c for c in sets},
        "ood_sets": {c: [c] for c in sets}, "ood_groups": {}, "set_categories": sets,
        "summary": {}, "per_client": {}, "matrices": {"global": {c: {c: acc[c]} for c in sets}},
        "records": {"global": {c: {c: hits[c]} for c in sets}},
        "communication": {}, "timing": {"wall_seconds": 1.0},
        "config": {"method": method, "seed": 0, "data": {"train_per_client": 64, "train_subset_seed": "split"}},
    })


def test_the_table_average_leaves_out_an_uninformative_category_and_says_so():
    runs = [("m1", 0, "", results_with_records("m1", {"p1": "1100", "s1": "1010"})),
            ("m2", 0, "", results_with_records("m2", {"p1": "0000", "s1": "1010"}))]
    summary = aggregate(runs, ["m1", "m2"], [0])
    assert summary["uninformative"] == {"ood": ["sent"], "id": ["sent"]}
    assert summary["table"]["ood"]["m1"]["global"]["average"]["mean"] == pytest.approx(0.5)  # para alone
    assert summary["table"]["ood"]["m1"]["global"]["sent"]["mean"] == pytest.approx(0.5)  # still shown
    md = render_compare(summary)
    assert "| method | model | para | sent † | average |" in md
    assert "† uninformative: every compared model gives the same outcome on every record of sent" in md
    assert "One seed: the intervals cover only which test records were drawn" in md


def test_the_caption_says_which_variance_the_seeds_cover():
    runs = [("m1", s, "", results_with_records("m1", {"p1": "1100", "s1": "1010"})) for s in (0, 1)]
    summary = aggregate(runs, ["m1"], [0, 1])
    summary["config"] = {"data": {"train_per_client": 64, "train_subset_seed": "split"}}
    assert "training order and the adapters' initialization only" in render_compare(summary)
    summary["config"] = {"data": {"train_per_client": 64, "train_subset_seed": "run"}}
    assert "each client's training subset" in render_compare(summary)


# ----------------------------------------------------------------------------- seeds draw their training data


def test_run_seeds_draw_their_own_training_subsets_with_the_test_sets_fixed():
    from fedoa.data.scenario import build_scenario

    def clients(subset: str, seed: int):
        cfg = load_config(None, [f"data.train_subset_seed={subset}", "data.train_per_client=8",
                                 "data.test_per_client=10", f"seed={seed}"])
        return {c.name: c for c in build_scenario(cfg).clients}

    split0, split1, run0, run1 = clients("split", 0), clients("split", 1), clients("run", 0), clients("run", 1)
    for name in split0:
        train = lambda cs: [r.instruction for r in cs[name].train]  # noqa: E731
        test = lambda cs: [r.instruction for r in cs[name].test]  # noqa: E731
        assert train(split0) == train(split1)  # "split": one subset for every seed
        assert train(run0) != train(run1) and len(train(run1)) == 8  # "run": each seed its own
        assert test(split0) == test(split1) == test(run0) == test(run1)  # the test sets never move


def test_compare_turns_seed_drawn_training_data_on_unless_the_config_names_it():
    from fedoa.compare.runner import finished, plan_runs, seeds_vary_training_data

    assert seeds_vary_training_data(load_config(None)).data.train_subset_seed == "run"
    pinned = seeds_vary_training_data(load_config(None, ["data.train_subset_seed=split"]))
    assert pinned.data.train_subset_seed == "split"
    assert RunConfig().data.train_subset_seed == "split"  # `fedoa run` keeps the fixed subset
    # the committed evidence pins it, so its finished runs stay finished (nothing is retrained)
    evidence = seeds_vary_training_data(load_config(REPO / "benchmarks" / "flan8_evidence.toml"))
    assert evidence.data.train_subset_seed == "split"
    folder = REPO / "benchmarks" / "evidence" / "within-category"
    if (folder / "runs" / "fedit" / "seed0" / "results.json").is_file():
        spec = plan_runs(evidence, ["fedit"], [0], [""], folder)[0]
        assert finished(spec) is not None
