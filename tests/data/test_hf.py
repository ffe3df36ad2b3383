import json

import datasets
import pytest

from fedoa.data.hf import load_hf
from fedoa.errors import DataError, FedoaError

Q = "Is it good?\nOPTIONS:\n- yes\n- no"
COLS = {"instruction": "q", "output": "a"}


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Never touch the hub, and keep datasets' arrow cache inside the test folder."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _saved(tmp_path, train, test=None):
    test = test if test is not None else train
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_dict(train), test=datasets.Dataset.from_dict(test))
    folder = tmp_path / "saved"
    dd.save_to_disk(str(folder))
    return str(folder)


def test_saved_folder_with_all_columns(tmp_path):
    path = _saved(tmp_path, {
        "q": [Q, "Pick one", "Free text?"],
        "a": ["yes", "b", "anything"],
        "opts": [[], ["a", "b"], []],
        "t": ["t2", "t1", "t1"],
        "c": ["z", "y", "y"],
    })
    cols = {**COLS, "options": "opts", "task": "t", "category": "c"}
    out = load_hf(path, cols)
    assert list(out) == ["t1", "t2"]  # ordered by (category, task)
    r = out["t2"][0][0]
    assert (r.options, r.task, r.category) == (("yes", "no"), "t2", "z")  # parsed from instruction
    assert out["t1"][0][0].options == ("a", "b")
    assert out["t1"][0][1].options == ()
    assert list(load_hf(path, cols, tasks=["t2"])) == ["t2"]
    with pytest.raises(DataError, match="available: t1, t2"):
        load_hf(path, cols, tasks=["t3"])


def test_newline_options_and_classlabel(tmp_path):
    features = datasets.Features({
        "q": datasets.Value("string"),
        "a": datasets.ClassLabel(names=["neg", "pos"]),
        "o": datasets.Value("string"),
    })
    data = {"q": ["Mood?"], "a": [1], "o": ["- neg\n- pos"]}
    ds = datasets.Dataset.from_dict(data, features=features)
    folder = tmp_path / "cl"
    datasets.DatasetDict(train=ds, test=ds).save_to_disk(str(folder))
    out = load_hf(str(folder), {**COLS, "options": "o"})
    r = out["cl"][0][0]  # default task: the dataset's name
    assert (r.output, r.options) == ("pos", ("neg", "pos"))


def test_json_folder(tmp_path):
    folder = tmp_path / "js"
    folder.mkdir()
    for split, answer in (("train", "yes"), ("test", "no")):
        (folder / f"{split}.jsonl").write_text(json.dumps({"q": Q, "a": answer}) + "\n")
    out = load_hf(str(folder), COLS)
    assert [len(x) for x in out["js"]] == [1, 1]
    assert out["js"][1][0].output == "no"


def test_cannot_load(tmp_path):
    with pytest.raises(FedoaError, match="cannot load dataset .*missing"):
        load_hf(str(tmp_path / "missing"), COLS)


def test_single_dataset_without_splits(tmp_path):
    datasets.Dataset.from_dict({"q": [Q], "a": ["yes"]}).save_to_disk(str(tmp_path / "one"))
    with pytest.raises(FedoaError, match="no named splits"):
        load_hf(str(tmp_path / "one"), COLS)


def test_column_errors(tmp_path):
    path = _saved(tmp_path, {"q": [Q], "a": ["yes"]})
    with pytest.raises(DataError, match=r"data\.hf_columns\.output.*'answer'.*\['q', 'a'\]"):
        load_hf(path, {"instruction": "q", "output": "answer"})
    with pytest.raises(DataError, match=r"data\.hf_columns\.output: is required"):
        load_hf(path, {"instruction": "q"})
    with pytest.raises(DataError, match=r"data\.hf_columns\.label: unknown record field"):
        load_hf(path, {**COLS, "label": "a"})
    with pytest.raises(DataError, match=r"data\.hf_test_split.*'validation'"):
        load_hf(path, COLS, test_split="validation")


@pytest.mark.parametrize(
    "train, cols, message",
    [
        ({"q": [Q, Q], "a": ["yes", "maybe"]}, COLS, "not among the options"),
        ({"q": [Q, Q], "a": ["yes", None]}, COLS, "must be a string"),
        ({"q": [Q, Q], "a": ["yes", "no"], "o": [None, 2]},
         {**COLS, "options": "o"}, "options must be"),
    ],
)
def test_bad_rows_name_split_and_index(tmp_path, train, cols, message):
    test = {"q": [Q], "a": ["yes"], **({"o": [None]} if "o" in train else {})}
    path = _saved(tmp_path, train, test)
    with pytest.raises(DataError, match=message) as info:
        load_hf(path, cols)
    assert f"{path}[train]:1" in str(info.value)
