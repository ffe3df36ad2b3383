"""lm-evaluation-harness scores an exported adapter the way fedoa does (optional extra ``lmeval``).

A local multiple-choice task (a jsonl file built from the run's own VADER test set, no hub) goes
through lm-eval's ``hf`` model with ``peft=`` the exported adapter; each record's verdict must
equal fedoa's own option scoring of that model in results.json."""
import json

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


@pytest.mark.slow
def test_lm_eval_hf_model_with_the_exported_adapter_agrees_with_fedoa(tiny_run, tmp_path, monkeypatch):
    import lm_eval  # installed by `make test` (the test extra): never skipped
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    adapter = tmp_path / "adapter"
    assert main(["export", str(tiny_run), "--client", "movie", "--out", str(adapter), "--quiet"]) == 0

    run = FinishedRun.open(tiny_run)
    records = run_test_sets(run.cfg)["movie"]  # the run's own test set of client movie, in its order
    rows = [{"prompt": PLAIN.format(instruction=r.instruction), "options": list(r.options),
             "answer": list(r.options).index(r.output)} for r in records]
    (tmp_path / "movie.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "fedoa_movie.yaml").write_text(TASK.format(data=tmp_path / "movie.jsonl", cache=tmp_path / "hf-cache"))

    out = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(tiny_model_dir()), "peft": str(adapter), "dtype": "float32",
                                "device": "cpu"},
        tasks=["fedoa_movie"], task_manager=TaskManager(include_path=str(tasks)), batch_size=4, log_samples=True,
    )
    verdicts = "".join(str(int(s["acc"])) for s in sorted(out["samples"]["fedoa_movie"], key=lambda s: s["doc_id"]))
    recorded = json.loads((tiny_run / "results.json").read_text())["records"]
    ours = recorded["personal"]["movie"]["movie"]
    assert ours != recorded["zero_shot"]["movie"]["movie"]  # the adapter changes verdicts: it must be applied
    assert verdicts == ours
    assert out["results"]["fedoa_movie"]["acc,none"] == pytest.approx(ours.count("1") / len(ours))
