import json

import pytest

from fedoa.data.records import make_record, parse_options
from fedoa.errors import DataError


def _first(path):
    with path.open(encoding="utf-8") as f:
        return json.loads(f.readline())


def test_snli_three_options(flan8):
    row = _first(flan8 / "entailment" / "snli_train.jsonl")
    assert parse_options(row["instruction"]) == ("yes", "it is not possible to tell", "no")


def test_record_many_options_with_periods(flan8):
    row = _first(flan8 / "reading_comprehension" / "record_test.jsonl")
    options = parse_options(row["instruction"])
    assert len(options) > 5
    assert all(o.endswith(".") for o in options)
    assert row["output"] in options


def test_every_flan8_output_is_an_option(flan8):
    for path in flan8.glob("*/*.jsonl"):
        for line in path.read_text(encoding="utf-8").split("\n"):
            if not line:
                continue
            row = json.loads(line)
            assert row["output"] in parse_options(row["instruction"]), path


def test_no_options_block():
    assert parse_options("Write a poem.") == ()


def test_make_record_rejects_output_outside_options():
    with pytest.raises(DataError, match="f.jsonl:3"):
        make_record("Q?\nOPTIONS:\n- a\n- b", "c", where="f.jsonl:3")
