"""``fedoa eval``, ``generate`` and ``report`` on a finished run of the tiny model."""
import json
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedoa.cli import main
from fedoa.cli.report import html_renderer
from fedoa.data.prompts import PLAIN
from fedoa.finished import FinishedRun
from fedoa.reports.markdown import render_report
from fedoa.reports.results import Results
from fedoa.runtime.session import open_session
from tests.support import synthetic_clients
from fedoa.testing import tiny_model_dir

OWN_DATA = ["--data", "vader", "--set", "data.tasks=['movie','tweets','nyt']"]


#: batched: every model in one pass per batch of records (docs/batched.md), the run itself evaluated sequentially
@pytest.mark.parametrize("batch", ["off", "on"])
def test_eval_on_the_runs_own_data_reproduces_its_results(tiny_run, tmp_path, capsys, batch):
    out = tmp_path / "ev"
    assert main(["eval", str(tiny_run), *OWN_DATA, "--out", str(out), "--quiet",
                 "--set", f"runtime.batch_clients={batch!r}"]) == 0
    ev = json.loads((out / "eval.json").read_text())
    res = json.loads((tiny_run / "results.json").read_text())
    assert ev["kinds"] == ["personal", "mixed", "global", "zero_shot"]
    assert res["records"]["mixed"] != res["records"]["global"]  # the mix (from training prompts) matters
    assert ev["matrices"] == res["matrices"] and ev["records"] == res["records"]
    for kind in ev["kinds"]:
        for key in ("id_accuracy", "ood_accuracy"):
            assert ev["summary"][kind][key] == pytest.approx(res["summary"][kind][key])
    assert ev["id_set"] == {c: c for c in res["clients"]}
    assert "## Matrix: mixed" in (out / "eval.md").read_text()
    assert "| personal |" in capsys.readouterr().out


def test_the_mixed_model_is_rebuilt_from_the_runs_own_training_prompts(tiny_run):
    run = FinishedRun.open(tiny_run)
    assert run.algorithm.eval_uses_training_data("mixed") and not run.algorithm.eval_uses_training_data("personal")
    assert run.training_prompts("mixed") == open_session(run.trained).train


def write_flan_like(root, names=("alpha", "beta")):
    """A Flan-8-layout folder: <category>/<task>_{train,test}.jsonl."""
    for client in synthetic_clients(names, n_train=2, n_test=5, seed=3):
        folder = root / "sentiment"
        folder.mkdir(parents=True, exist_ok=True)
        for split, recs in (("train", client.train), ("test", client.test)):
            lines = [json.dumps({"instruction": r.instruction, "output": r.output}) for r in recs]
            (folder / f"{client.name}_{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_eval_on_a_jsonl_folder_scores_every_client_on_every_set(tiny_run, tmp_path):
    data = write_flan_like(tmp_path / "flan")
    out = tmp_path / "ev"
    assert main(["eval", str(tiny_run), "--data", str(data), "--kinds", "personal,global", "--out", str(out),
                 "--quiet"]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["test_sets"] == {"alpha": 5, "beta": 5} and ev["id_set"] == {}
    assert set(ev["matrices"]) == {"personal", "global"}
    for kind in ev["matrices"]:
        assert set(ev["matrices"][kind]) == {"movie", "tweets", "nyt"}
        for row in ev["matrices"][kind].values():
            assert set(row) == {"alpha", "beta"} and all(0 <= v <= 1 for v in row.values())
    assert ev["summary"]["personal"]["id_accuracy"] is None  # no set bears a client's name
    assert all(len(h) == 5 for h in ev["records"]["global"]["movie"].values())


def test_eval_on_a_hugging_face_dataset_through_the_data_hf_keys(tiny_run, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    recs = synthetic_clients(("x",), n_train=3, n_test=4, seed=5)[0]
    split = {r: datasets.Dataset.from_dict({"q": [x.instruction for x in v], "a": [x.output for x in v]})
             for r, v in (("train", recs.train), ("test", recs.test))}
    datasets.DatasetDict(split).save_to_disk(str(tmp_path / "saved"))
    out = tmp_path / "ev"
    assert main(["eval", str(tiny_run), "--data", f"hf:{tmp_path / 'saved'}", "--set",
                 'data.hf_columns={instruction="q", output="a"}', "--kinds", "global", "--out", str(out),
                 "--quiet"]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert list(ev["test_sets"].values()) == [4] and ev["data"]["source"] == "hf"
    assert len(ev["records"]["global"]["movie"][next(iter(ev["test_sets"]))]) == 4


@pytest.fixture
def broken_run(tiny_run, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_run, folder)
    shutil.rmtree(folder / "adapters" / "personal" / "tweets")
    return folder


def bad_input_cases(tmp_path, run, broken):
    bad_jsonl = tmp_path / "bad" / "cat"
    bad_jsonl.mkdir(parents=True)
    (bad_jsonl / "t_test.jsonl").write_text('{"instruction": "Q?\\nOPTIONS:\\n- a\\n- b", "output": "a"}\n{oops\n')
    return [
        (["eval", str(tmp_path / "nope"), "--data", "vader"], "nope"),
        (["eval", str(tmp_path), "--data", "vader"], "results.json"),
        (["eval", str(broken), *OWN_DATA], "personal/tweets"),
        (["eval", str(run), "--data", str(tmp_path / "no-data")], "no-data"),
        (["eval", str(run), "--data", str(tmp_path / "bad")], "t_test.jsonl:2"),
        (["eval", str(run), *OWN_DATA, "--set", "lora.r=2"], "lora.r"),
        (["eval", str(run), *OWN_DATA, "--kinds", "personal,bogus"], "bogus"),
        (["generate", str(run), "--client", "nobody", "--prompt", "hi"], "nobody"),
        (["generate", str(run), "--prompt", "hi"], "--client"),
        (["report", str(tmp_path / "nope")], "nope"),
    ]


def test_bad_input_exits_2_with_one_line(tiny_run, broken_run, tmp_path, capsys):
    for argv, needle in bad_input_cases(tmp_path, tiny_run, broken_run):
        code = main([*argv, "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2, argv
        errors = [line for line in err.splitlines() if line.startswith("fedoa: error:")]  # warnings may precede
        assert len(errors) == 1 and needle in errors[0], (argv, err)
    assert not (tiny_run / "eval").exists()


def greedy(model, tok, prompt: str, n: int) -> str:
    ids = torch.tensor([tok(PLAIN.format(instruction=prompt))["input_ids"]])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_generate_answers_like_stock_transformers_with_the_runs_template(tiny_run, capsys):
    prompt = "Is this movie text positive or negative?\nsuperb warm fun"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir())
    answers = {}
    for kind in ("zero_shot", "personal"):
        assert main(["generate", str(tiny_run), "--client", "movie", "--kind", kind, "--prompt", prompt,
                     "--max-new-tokens", "6", "--quiet"]) == 0
        answers[kind] = capsys.readouterr().out.strip()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir(), dtype=torch.float32)
    assert answers["zero_shot"] == greedy(base, tok, prompt, 6)
    stock = PeftModel.from_pretrained(base, tiny_run / "adapters" / "personal" / "movie")
    assert answers["personal"] == greedy(stock, tok, prompt, 6)


def test_report_rebuilds_the_report_from_results_json(tiny_run, tmp_path, capsys):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("results.json", "metrics.jsonl"):
        shutil.copy(tiny_run / name, folder / name)
    assert main(["report", str(folder)]) == 0
    text = (folder / "report.md").read_text()
    assert text == render_report(Results.load(folder / "results.json")) == (tiny_run / "report.md").read_text()
    assert (folder / "accuracy.png").stat().st_size > 1000
    assert (folder / "report.html").is_file() == (html_renderer() is not None)
    assert "report.md" in capsys.readouterr().out
