"""The bad-input catalogue (docs/bad-input.md): every kind of bad input listed there is tried here
through the real command line (or the real server logic) and must give its one-line message and
exit code, and leave earlier results untouched. The doc's table and this file name the same ids."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedoa.cli import main
from fedoa.testing import tiny_model_dir

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"
TINY = ["--set", f"model.name={str(tiny_model_dir())!r}", "--set", "fed.rounds=1", "--set", "fed.personal_start_round=1",
        "--set", "data.train_per_client=4", "--set", "data.test_per_client=4", "--set", "model.max_length=64",
        "--set", "eval.every=0", "--set", "tracking.tensorboard=false", "--quiet"]


def jsonl(folder: Path, name: str, lines: list[str] | bytes, category: str = "sentiment") -> Path:
    path = folder / category / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lines if isinstance(lines, bytes) else "".join(line + "\n" for line in lines).encode())
    return path


def record(text: str = "good", label: str = "positive", **extra) -> str:
    return json.dumps({"instruction": f"Is '{text}' positive?\nOPTIONS:\n- negative\n- positive", "output": label, **extra})


def data_folder(tmp: Path, train=None, test=None) -> Path:
    root = tmp / "data"
    jsonl(root, "t_train.jsonl", train if train is not None else [record(f"t{i}") for i in range(4)])
    jsonl(root, "t_test.jsonl", test if test is not None else [record(f"s{i}", "negative") for i in range(4)])
    jsonl(root, "u_train.jsonl", [record(f"u{i}") for i in range(4)])
    jsonl(root, "u_test.jsonl", [record(f"v{i}") for i in range(4)])
    return root


def extra_task(root: Path, name: str) -> Path:
    jsonl(root, f"{name}_train.jsonl", [record(f"x{i}") for i in range(4)])
    jsonl(root, f"{name}_test.jsonl", [record(f"y{i}") for i in range(4)])
    return root


def hf_with_configs(tmp: Path) -> Path:
    """A local Hugging Face dataset with two configurations (README front matter)."""
    root = tmp / "hf"
    for c in ("a", "b"):
        for split in ("train", "test"):
            jsonl(root, f"{split}.jsonl", [record(f"{c}{i}") for i in range(4)], category=c)
    files = "".join(f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/train.jsonl\n"
                    f"  - split: test\n    path: {c}/test.jsonl\n" for c in ("a", "b"))
    (root / "README.md").write_text(f"---\nconfigs:\n{files}---\n")
    return root


def jsonl_run(tmp: Path, root: Path, *extra: str) -> list[str]:
    return ["run", "--out", str(tmp / "out"), *TINY, "--set", "data.source=jsonl", "--set", f"data.path={str(root)!r}", *extra]


# id -> a function of the test's folder returning the fedoa argv (or running the real thing itself)
SCENARIOS = {
    "unknown-key": lambda t: ["run", "--out", str(t / "out"), "--set", "train.lrr=1"],
    "wrong-type": lambda t: ["run", "--out", str(t / "out"), "--set", "fed.rounds=2.5"],
    "nan": lambda t: ["run", "--out", str(t / "out"), "--set", "train.lr=nan"],
    "infinite": lambda t: ["run", "--out", str(t / "out"), "--set", "fedoa.regular_weight=inf"],
    "out-of-range": lambda t: ["run", "--out", str(t / "out"), "--set", "lora.alpha=0"],
    "negative-count": lambda t: ["run", "--out", str(t / "out"), "--set", "data.train_per_client=-1"],
    "personal-after-last-round": lambda t: ["run", "--out", str(t / "out"), "--set", "fed.personal_start_round=9"],
    "unknown-method": lambda t: ["run", "--out", str(t / "out"), "--set", "method=fedsgd"],
    "config-not-toml": lambda t: (t / "c.toml").write_text("[train\n") and ["run", "--out", str(t / "out"), "--config", str(t / "c.toml")],
    "config-not-utf8": lambda t: (t / "c.toml").write_bytes(b"[train]\nlr = \xff\n") and ["run", "--out", str(t / "out"), "--config", str(t / "c.toml")],
    "config-missing": lambda t: ["run", "--out", str(t / "out"), "--config", str(t / "nope.toml")],
    "data-folder-missing": lambda t: jsonl_run(t, t / "nowhere"),
    "empty-file": lambda t: jsonl_run(t, data_folder(t, test=[])),
    "not-utf8": lambda t: jsonl_run(t, data_folder(t, train=(record("a") + "\n").encode() + b'{"instruction": "\xff"}\n')),
    "bad-json-line": lambda t: jsonl_run(t, data_folder(t, train=[record("a"), "{not json"])),
    "missing-field": lambda t: jsonl_run(t, data_folder(t, train=[record("a"), json.dumps({"instruction": "x"})])),
    "answer-not-an-option": lambda t: jsonl_run(t, data_folder(t, train=[record("a", "maybe")])),
    "unsafe-task-name": lambda t: jsonl_run(t, extra_task(data_folder(t), "bad name")),
    "case-colliding-names": lambda t: jsonl_run(t, extra_task(data_folder(t), "T")),
    "byte-order-mark": "special",
    "answer-normalization": "special",
    "degenerate-options": lambda t: jsonl_run(t, data_folder(t, train=[record("a"), json.dumps(
        {"instruction": "Is it?\nOPTIONS:\n- yes\n- yes ", "output": "yes"})])),
    "huge-data-file": "special",
    "hf-several-configs": lambda t: ["run", "--out", str(t / "out"), *TINY, "--set", "data.source=hf",
                                     "--set", f"data.path={str(hf_with_configs(t))!r}"],
    "tokenizer-without-eos": "special",
    "model-missing": lambda t: ["run", "--out", str(t / "out"), "--set", "model.name='/no/such/model'"],
    "target-modules-absent": lambda t: ["run", "--out", str(t / "out"), *TINY, "--set", "lora.target_modules=['qkv']"],
    "device-absent": lambda t: ["run", "--out", str(t / "out"), *TINY, "--set", "model.device='cuda:3'"],
    "unwritable-output": lambda t: (t / "file").write_text("x") and ["run", "--out", str(t / "file" / "out"), *TINY],
    "changed-config": "special",
    "another-runs-results": "special",  # tests/runtime/test_no_lost_run.py (needs a finished run first)
    "duplicates-and-overlap": "special",
    "too-long": "special",
    "hostile-upload": "special",
    "non-finite-loss": lambda t: ["run", "--out", str(t / "out"), *TINY, "--set", "train.lr=1e30", "--set", "model.dtype='float16'",
                                   "--set", "train.batch_size=2", "--set", "train.micro_batch_size=2"],
}


def catalogue() -> list[tuple[str, str, int]]:
    """(id, message fragment, exit code) of every row of the doc's table."""
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|[^|]*\| ([^|]*) \| (\d) \|", DOC.read_text(), flags=re.M)
    return [(i, re.search(r"`([^`]*)`", msg).group(1), int(code)) for i, msg, code in rows]


def test_the_doc_and_the_tests_name_the_same_bad_inputs():
    ids = [i for i, _, _ in catalogue()]
    assert len(ids) >= 20 and len(set(ids)) == len(ids)
    assert set(ids) == set(SCENARIOS)


@pytest.mark.parametrize("case", [c for c in catalogue() if SCENARIOS.get(c[0]) != "special"], ids=lambda c: c[0])
def test_each_bad_input_gives_its_one_line_message_and_leaves_earlier_results(tmp_path, capsys, case):
    name, fragment, code = case
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"earlier": true}')
    argv = SCENARIOS[name](tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("fedoa: error:")]
    assert len(errors) == 1 and fragment in errors[0], err
    assert json.loads((out / "results.json").read_text()) == {"earlier": True}
    # a run that failed on its own (exit 1) keeps its work in progress (.run/) for a resume
    assert sorted(p.name for p in out.iterdir()) == (["results.json"] if code == 2 else [".run", "results.json"])


def test_changed_config_between_runs(tmp_path, capsys):
    from fedoa.checkpoint import save_checkpoint

    out = tmp_path / "out"
    save_checkpoint(out / ".run" / "checkpoint", 1, {}, {}, {"config": {"train": {"lr": 0.5}}, "clients": []})
    assert main(["run", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "--fresh" in err
    assert main(["run", "--out", str(out), "--fresh", *TINY]) == 0  # --fresh starts over


def test_duplicates_overlap_and_too_long_records_are_warned_counted_and_reported(tmp_path, capsys):
    long = "word " * 200
    train = [record("a"), record("a"), record("same"), record(long), record("b")]
    root = data_folder(tmp_path, train=train, test=[record("same"), record("c", "negative")])
    assert main(jsonl_run(tmp_path, root, "--set", "data.train_per_client=0")) == 0
    err = capsys.readouterr().err
    assert "1 duplicate train" in err and "1 test in train" in err and "were cut from the left" in err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["data"]["checks"]["t"] == {"duplicate_train": 1, "duplicate_test": 0, "test_in_train": 1}
    assert results["data"]["truncated_train"] == {"t": 1}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Data checks" in report and "1 training prompt(s) cut" in report


def test_a_hostile_upload_is_rejected_with_its_reason(tmp_path):
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), *TINY, "--set", "attack.kind='nan'", "--set", "attack.clients=['movie']"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert any("update rejected: tensor" in f and "non-finite" in f for f in results["failures"])


def test_a_byte_order_mark_is_skipped_with_a_warning(tmp_path, capsys):
    from fedoa.data.jsonl import load_jsonl_file

    path = jsonl(tmp_path, "t_train.jsonl", b"\xef\xbb\xbf" + (record("a") + "\n" + record("b") + "\n").encode())
    assert [r.output for r in load_jsonl_file(path, task="t")] == ["positive", "positive"]
    assert "byte-order mark at the start of the file was skipped" in capsys.readouterr().err


def test_answers_that_differ_from_their_option_only_by_whitespace_or_normalization_train_and_score_as_it(tmp_path):
    import unicodedata

    from fedoa.data.jsonl import load_jsonl_file

    nfd = unicodedata.normalize("NFD", "café")
    lines = [json.dumps({"instruction": f"Which?\nOPTIONS:\n- {nfd}\n- tea", "output": "café "}),
             json.dumps({"instruction": "Is it?\nOPTIONS:\n- yes \n- no", "output": " yes"})]
    recs = load_jsonl_file(jsonl(tmp_path, "t_train.jsonl", lines), task="t")
    assert recs[0].output == "café" and recs[0].output in recs[0].options  # the same text for training and scoring
    assert recs[1].output == "yes" and recs[1].options == ("yes", "no")
    root = data_folder(tmp_path, train=lines * 2)
    assert main(jsonl_run(tmp_path, root)) == 0


def test_a_data_file_is_streamed_line_by_line(tmp_path, monkeypatch):
    from fedoa.data.jsonl import load_jsonl_file

    path = jsonl(tmp_path, "t_train.jsonl", [record(f"r{i}") for i in range(1000)])
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("the whole file was read at once"))
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: pytest.fail("the whole file was read at once"))
    assert len(load_jsonl_file(path, task="t")) == 1000


def test_a_tokenizer_without_eos_is_one_line_and_one_without_pad_pads_with_eos():
    from transformers import AutoTokenizer

    from fedoa.errors import FedoaError
    from fedoa.model.base import _prepare_tokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir()))
    tok.pad_token = None
    assert _prepare_tokenizer(tok).pad_token_id == tok.eos_token_id
    tok.eos_token = None
    with pytest.raises(FedoaError, match=r"has no end-of-sequence \(EOS\) token") as e:
        _prepare_tokenizer(tok)
    assert e.value.exit_code == 2 and "\n" not in str(e.value)


def test_an_hf_dataset_configuration_is_chosen_with_data_hf_config(tmp_path):
    from fedoa.data.hf import load_hf

    root = hf_with_configs(tmp_path)
    splits = load_hf(str(root), {"instruction": "instruction", "output": "output"}, config="b")
    [(train, test)] = splits.values()
    assert len(train) == 4 and train[0].instruction.startswith("Is 'b0'")
