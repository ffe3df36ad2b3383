import json

import pytest

from fedoa.data.jsonl import load_jsonl_file, load_jsonl_folder
from fedoa.errors import DataError

GOOD = {"instruction": "Q?\nOPTIONS:\n- yes\n- no", "output": "yes", "task": "t", "category": "c"}


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _ok(**kw):
    return json.dumps({**GOOD, **kw})


def test_flan8_folder(flan8):
    tasks = load_jsonl_folder(flan8)
    assert len(tasks) == 8
    assert {len(tr) for tr, _ in tasks.values()} == {1000}
    assert {len(te) for _, te in tasks.values()} == {200}
    cats = {r.category for tr, te in tasks.values() for r in tr + te}
    assert cats == {"entailment", "paraphrase", "reading_comprehension", "sentiment"}
    assert list(tasks) == ["anli", "snli", "glue_mrpc", "stsb", "openbook_qa", "record",
                           "sentiment140", "sst2"]
    # ReCoRD's own category field says read_comp_and_common_sense: the folder wins.
    assert {r.category for r in tasks["record"][0]} == {"reading_comprehension"}
    assert {r.task for r in tasks["anli"][1]} == {"anli"}


def test_flan8_filter(flan8):
    tasks = load_jsonl_folder(flan8, ["sst2", "record"])
    assert list(tasks) == ["record", "sst2"]
    with pytest.raises(DataError, match="available: anli"):
        load_jsonl_folder(flan8, ["nope"])


def test_file_category_override_and_blank_lines(tmp_path):
    path = _write(tmp_path / "a.jsonl", [_ok(), "", "   ", _ok(output="no")])
    records = load_jsonl_file(path, category="folder")
    assert [r.output for r in records] == ["yes", "no"]
    assert {r.category for r in records} == {"folder"}
    assert records[0].options == ("yes", "no") and records[0].task == "t"
    assert load_jsonl_file(path)[0].category == "c"


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"output": "yes", "task": "t"}), "'instruction'"),
        (json.dumps({"instruction": "Q?", "task": "t"}), "'output'"),
        (json.dumps({"instruction": "Q?", "output": "x"}), "'task'"),
        (_ok(output=3), "'output' must be a string"),
        (_ok(category=["c"]), "'category' must be a string"),
        (_ok(output="maybe"), "not among the options"),
        (_ok(instruction="  "), "instruction"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path / "bad_train.jsonl", [_ok(), "", bad])
    with pytest.raises(DataError, match=message) as info:
        load_jsonl_file(path)
    assert "bad_train.jsonl:3" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="missing.jsonl"):
        load_jsonl_file(tmp_path / "missing.jsonl")


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.jsonl"
    line = json.dumps({**GOOD, "task": "caf\u00e9"}, ensure_ascii=False)
    path.write_bytes(line.encode("latin-1"))
    with pytest.raises(DataError, match="latin.jsonl"):
        load_jsonl_file(path)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_jsonl_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="no <category>"):
        load_jsonl_folder(tmp_path)
    _write(tmp_path / "cat" / "t_train.jsonl", [_ok()])
    with pytest.raises(DataError, match="no test file"):
        load_jsonl_folder(tmp_path)
    _write(tmp_path / "cat" / "t_test.jsonl", [_ok()])
    _write(tmp_path / "cat" / "u_test.jsonl", [_ok()])
    with pytest.raises(DataError, match="'u' has no train file"):
        load_jsonl_folder(tmp_path)


def test_folder_error_inside_file_names_line(tmp_path):
    _write(tmp_path / "cat" / "t_train.jsonl", [_ok()])
    _write(tmp_path / "cat" / "t_test.jsonl", [_ok(), _ok(output="nah")])
    with pytest.raises(DataError, match=r"t_test\.jsonl:2"):
        load_jsonl_folder(tmp_path)
