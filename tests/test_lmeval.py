"""lm-evaluation-harness scores an exported adapter the way fedoa does (optional extra ``lmeval``).

A local multiple-choice task (a jsonl file built from the run's own VADER test set, no hub) goes
through lm-eval's ``hf`` model with ``peft=`` the exported adapter; each record's verdict must
equal fedoa's own option scoring of that model in results.json."""
import json
from pathlib import Path

import pytest

from fedoa.cli import main
from fedoa.cli.eval import test_sets as run_test_sets
from fedoa.data.prompts import PLAIN
from fedoa.finished import FinishedRun
from fedoa.testing import tiny_model_dir

TASK = """task: fedoa_movie
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: prompt
doc_to_choice: options
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_movie_task(records, folder: Path) -> Path:
    """A task folder for lm-eval's include_path: ``fedoa_movie`` over ``records`` in the run's prompt."""
    rows = [{"prompt": PLAIN.format(instruction=r.instruction), "options": list(r.options),
             "answer": list(r.options).index(r.output)} for r in records]
    (folder / "movie.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    tasks = folder / "tasks"
    tasks.mkdir()
    (tasks / "fedoa_movie.yaml").write_text(TASK.format(data=folder / "movie.jsonl", cache=folder / "hf-cache"))
    return tasks


@pytest.mark.slow
def test_lm_eval_hf_model_with_the_exported_adapter_agrees_with_fedoa(tiny_run, tmp_path, monkeypatch):
    import lm_eval  # installed by `make test` (the test extra): never skipped
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    adapter = tmp_path / "adapter"
    assert main(["export", str(tiny_run), "--client", "movie", "--out", str(adapter), "--quiet"]) == 0

    run = FinishedRun.open(tiny_run)
    tasks = write_movie_task(run_test_sets(run.cfg)["movie"], tmp_path)  # the run's own test set of client movie

    out = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(tiny_model_dir()), "peft": str(adapter), "dtype": "float32",
                                "device": "cpu"},
        tasks=["fedoa_movie"], task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        batch_size=4, log_samples=True,
    )
    verdicts = "".join(str(int(s["acc"])) for s in sorted(out["samples"]["fedoa_movie"], key=lambda s: s["doc_id"]))
    recorded = json.loads((tiny_run / "results.json").read_text())["records"]
    ours = recorded["personal"]["movie"]["movie"]
    assert ours != recorded["zero_shot"]["movie"]["movie"]  # the adapter changes verdicts: it must be applied
    assert verdicts == ours
    assert out["results"]["fedoa_movie"]["acc,none"] == pytest.approx(ours.count("1") / len(ours))


# ------------------------------------------------------------------ fedoa eval --lm-eval (in process)


def lm_eval_samples(results_file: str, task: str) -> dict[int, list[float]]:
    """doc id -> each option's log-likelihood, from lm-eval's own per-sample file beside its results file."""
    path = Path(results_file)
    samples = path.parent / f"samples_{task}_{path.stem.removeprefix('results_')}.jsonl"
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    return {r["doc_id"]: [float(ll) for ll, _ in r["filtered_resps"]] for r in rows}


@pytest.mark.slow
def test_fedoa_eval_lm_eval_scores_every_model_as_fedoa_and_exported_lm_eval_do(tiny_run, tmp_path, monkeypatch):
    """``fedoa eval RUN --lm-eval`` (no export) on a local task: every kind of every client gets
    fedoa's own verdicts (results.json) and fedoa's option log-likelihoods; the personal model's
    equal lm-eval's ``hf`` model with ``peft=`` the exported adapter."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from fedoa.evaluation.lmeval import task_manager
    from fedoa.evaluation.scoring import option_scores, prepare_set

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    run = FinishedRun.open(tiny_run)
    am, encoder = run.model
    # the records whose prompt fedoa did not cut to model.max_length (lm-eval keeps the model's own length)
    records = run_test_sets(run.cfg)["movie"]
    whole = [i for i, r in enumerate(records) if len(encoder.tokenizer(encoder.prompt_text(r.instruction))["input_ids"])
             + max(len(encoder.answer_ids(o)) for o in r.options) <= run.cfg.model.max_length]
    assert 3 <= len(whole) < len(records)
    records = [records[i] for i in whole]
    tasks = write_movie_task(records, tmp_path)
    # every task asked for is in the include path: lm-eval's ~15,000 built-in tasks are not indexed
    assert task_manager(["fedoa_movie"], str(tasks)).all_tasks == ["fedoa_movie"]
    out = tmp_path / "ev"
    assert main(["eval", str(tiny_run), "--lm-eval", "fedoa_movie", "--include-path", str(tasks), "--out", str(out),
                 "--log-samples", "--batch-size", "4", "--quiet"]) == 0
    ev = json.loads((out / "lmeval.json").read_text())
    results = json.loads((tiny_run / "results.json").read_text())
    assert ev["kinds"] == ["personal", "mixed", "global", "zero_shot"] and ev["clients"] == run.clients
    assert ev["metric"]["headline"] == {"fedoa_movie": "acc,none"}
    assert sorted(ev["outputs"]) == sorted(["global", "zero_shot", *(f"{k}/{c}" for k in ("personal", "mixed")
                                                                       for c in run.clients)])
    for kind in ev["kinds"]:
        for client in run.clients:
            verdicts = "".join(results["records"][kind][client]["movie"][i] for i in whole)
            assert ev["records"][kind][client]["fedoa_movie"] == verdicts
            assert ev["matrices"][kind][client]["fedoa_movie"] == pytest.approx(verdicts.count("1") / len(verdicts))

    # option log-likelihoods: fedoa's own scoring of each model vs lm-eval's samples of it. lm-eval
    # scores the prompt's last newline with the option (it moves trailing whitespace out of the
    # context), the same log-probability for every option of a record: the margins over option 0 compare.
    prepared = prepare_set(encoder, "movie", records)
    assert prepared.truncated == 0
    worst = 0.0
    for kind in ev["kinds"]:
        for client in run.clients:
            identity = "global" if kind == "global" else "zero_shot" if kind == "zero_shot" else f"{kind}/{client}"
            theirs = lm_eval_samples(ev["outputs"][identity], "fedoa_movie")
            run.activate(kind, client)
            ours = option_scores(am, prepared.prompts, prepared.options, encoder.tokenizer.pad_token_id)
            for doc, lls in theirs.items():
                worst = max(worst, *(abs((a - lls[0]) - (b - ours[doc][0])) for a, b in zip(lls, ours[doc])))
    assert worst < 1e-4, worst
    print(f"largest difference of an option's log-likelihood margin, lm-eval vs fedoa: {worst:.2e}")

    # the exported personal adapter of client movie through lm-eval's own hf model
    adapter = tmp_path / "adapter"
    assert main(["export", str(tiny_run), "--client", "movie", "--out", str(adapter), "--quiet"]) == 0
    exported = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(tiny_model_dir()), "peft": str(adapter), "dtype": "float32",
                                "device": "cpu"},
        tasks=["fedoa_movie"], task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        batch_size=4, log_samples=True)
    hf = {s["doc_id"]: [float(r[0]) for r in s["filtered_resps"]] for s in exported["samples"]["fedoa_movie"]}
    inproc = lm_eval_samples(ev["outputs"]["personal/movie"], "fedoa_movie")
    assert max(abs(a - b) for d in hf for a, b in zip(hf[d], inproc[d])) < 1e-4
    accuracy = ev["matrices"]["personal"]["movie"]["fedoa_movie"]
    assert exported["results"]["fedoa_movie"]["acc,none"] == pytest.approx(accuracy)


def test_fedoa_eval_needs_data_or_lm_eval_tasks(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "give --data (a data set) or --lm-eval (lm-eval tasks)" in capsys.readouterr().err


def test_lm_eval_headline_metric_and_verdicts():
    from fedoa.evaluation.lmeval import flat_scores, headline_metric, verdicts

    out = {"results": {"t": {"alias": "t", "sample_len": 3, "acc,none": 2 / 3, "acc_stderr,none": 0.3,
                             "acc_norm,none": 1.0}},
           "samples": {"t": [{"doc_id": 1, "acc": 0.0}, {"doc_id": 0, "acc": 1.0}, {"doc_id": 2, "acc": True}]}}
    assert headline_metric(out["results"]["t"]) == "acc,none"
    assert flat_scores(out) == {"t": {"acc,none": 2 / 3, "acc_stderr,none": 0.3, "acc_norm,none": 1.0}}
    assert verdicts(out, "t") == "101"
