"""Per-round evaluation and experiment tracking of a real (tiny) run: results.json, metrics.jsonl,
TensorBoard's event files and MLflow's store carry the same numbers under the same names."""
import json

import pytest

from fedoa.reports.tracking import scalars
from fedoa.runtime.inprocess import run_simulation
from tests.support import vader_tiny_config

pytestmark = pytest.mark.xdist_group("tracked-run")  # one worker builds the module's run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked") / "run"
    cfg = vader_tiny_config(fed={"rounds": 3}, eval={"every": 1, "round_records": 4}, tracking={"mlflow": True, "tensorboard": True})
    results = run_simulation(cfg, out, progress=False)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, results, lines


def test_every_round_is_evaluated_cheaply_and_the_last_fully(run):
    out, results, lines = run
    assert [r["round"] for r in results.rounds] == [1, 2, 3]
    assert results.rounds[0]["records"] == 4 and results.rounds[2].get("records") is None
    assert set(results.rounds[0]["summary"]) == {"personal", "global"}  # between rounds: no zero-shot, no mix
    assert results.rounds[-1]["summary"] == results.summary  # the last entry is the final evaluation
    evals = [line for line in lines if line["phase"] == "eval"]
    assert {(line["round"], line["kind"]) for line in evals} >= {(1, "personal"), (2, "global"), (3, "zero_shot")}
    first = next(line for line in evals if line["round"] == 1 and line["kind"] == "personal" and line["client"] == "movie")
    assert first["id_accuracy"] == results.rounds[0]["per_client"]["personal"]["movie"]["id_accuracy"]


def test_tensorboard_has_the_metrics_under_their_names(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, results, lines = run
    [events] = (out / "tensorboard").iterdir()
    acc = EventAccumulator(str(out / "tensorboard")).Reload()
    expected = {}
    for line in lines:
        for name, value in scalars(line).items():
            expected.setdefault(name, {})[line["round"]] = value
    assert "personal/task_loss/movie" in expected and "eval/global/ood_accuracy/nyt" in expected
    assert set(acc.Tags()["scalars"]) == set(expected)
    for name in ("personal/task_loss/movie", "update/update_norm/tweets", "eval/personal/id_accuracy/nyt"):
        got = {e.step: e.value for e in acc.Scalars(name)}
        assert got == pytest.approx(expected[name], rel=1e-6), name
    assert events.name.startswith("events.out.tfevents")


def test_mlflow_has_the_same_metrics(run):
    from mlflow.tracking import MlflowClient

    out, results, lines = run
    client = MlflowClient((out / "mlruns").resolve().as_uri())
    [experiment] = [e for e in client.search_experiments() if e.name == "fedoa"]
    [mlrun] = client.search_runs([experiment.experiment_id])
    history = {m.step: m.value for m in client.get_metric_history(mlrun.info.run_id, "global/task_loss/movie")}
    expected = {line["round"]: line["task_loss"] for line in lines if line["phase"] == "global" and line["client"] == "movie"}
    assert history == pytest.approx(expected, rel=1e-6)
    assert mlrun.data.params["method"] == "fedoa"


def test_the_run_writes_a_self_contained_html_report(run):
    out, results, lines = run
    page = (out / "report.html").read_text()
    assert page.count('class="plot"') >= 4 and "http://" not in page and "https://" not in page


def test_a_look_between_rounds_scores_only_its_first_records():
    from fedoa.evaluation.matrix import evaluate_models
    from fedoa.runtime.session import open_session

    session = open_session(vader_tiny_config())
    evaluator, plan = session.evaluator(), session.plan.limited(2)
    scores = evaluate_models(evaluator, plan, ["global"], lambda k, c: "g", lambda k, c: None)
    sets = {s for c in plan.clients for s in plan.sets_of(c)}
    assert evaluator.examples == 2 * len(sets)  # each set once (one shared model), 2 records of 6
    assert all(len(sc.options_hits) == 2 for per_set in scores["global"].values() for sc in per_set.values())
