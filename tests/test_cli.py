import json
import subprocess
import sys

import pytest

from fedoa.cli import main
from tests.support.runs import tiny_cli_args

TINY = tiny_cli_args()


@pytest.fixture
def earlier_results(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"earlier": true}')
    return out


def _assert_untouched(out):
    assert json.loads((out / "results.json").read_text()) == {"earlier": True}
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--set", "train.lrr=1"], "train.lrr"),
        (["--set", "fed.rounds=two"], "fed.rounds"),
        (["--set", "method=fedxyz"], "method"),
        (["--set", "model.name=/no/such/model"], "model.name"),
        (["--set", "data.source=jsonl", "--set", "data.path=/no/such/dir"], "/no/such/dir"),
        (["--set", "data.tasks=['cinema']"], "cinema"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_keeps_results(earlier_results, capsys, extra, needle):
    code = main(["run", "--out", str(earlier_results), "--quiet", *TINY, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and needle in err and err.startswith("fedoa: error:")
    _assert_untouched(earlier_results)


def test_bad_jsonl_line_names_file_and_line(tmp_path, earlier_results, capsys):
    data = tmp_path / "data" / "sentiment"
    data.mkdir(parents=True)
    good = json.dumps({"instruction": "Good?\nOPTIONS:\n- yes\n- no", "output": "yes", "task": "t"})
    (data / "t_train.jsonl").write_text(good + "\n" + "{not json\n")
    (data / "t_test.jsonl").write_text(good + "\n")
    code = main(["run", "--out", str(earlier_results), "--quiet", *TINY, "--set", "data.tasks=[]",
                 "--set", "data.source=jsonl", "--set", f"data.path={json.dumps(str(tmp_path / 'data'))}"])
    err = capsys.readouterr().err
    assert code == 2 and "t_train.jsonl:2" in err
    _assert_untouched(earlier_results)


def test_console_script_exits_2_on_bad_input(tmp_path):
    """(A real process: its success, exit 0 with results, is checked by tests/test_quiet.py.)"""
    bad = subprocess.run([sys.executable, "-m", "fedoa.cli", "run", "--out", str(tmp_path / "x"), "--set", "x.y=1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "x" in bad.stderr and not (tmp_path / "x").exists()


def test_methods_and_config_keys(capsys):
    assert main(["methods"]) == 0
    assert "fedoa" in capsys.readouterr().out
    assert main(["config", "--keys"]) == 0
    assert "fedoa.regular_weight" in capsys.readouterr().out
