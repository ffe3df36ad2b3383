"""The documentation says what the code does: the generated key reference is current, and the
worked example of docs/adding-a-method.md runs and does what it claims."""
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedoa.cli import main
from fedoa.cli.config import config_reference
from fedoa.registry import ALGORITHMS, SETTINGS
from fedoa.runtime.inprocess import run_simulation
from tests.support import vader_tiny_config

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_configuration_reference_is_current(capsys):
    assert main(["config", "--reference"]) == 0
    printed = capsys.readouterr().out
    assert printed == config_reference()
    assert (DOCS / "configuration.md").read_text() == printed, \
        "regenerate it: fedoa config --reference > docs/configuration.md"
    for key in ("`regular_weight`", "`personal_start_round`", "`hf_columns`", "(preset `128`)"):
        assert key in printed


@pytest.fixture
def serverstep(tmp_path):
    """The worked example's code block, imported as a module (it registers itself); unregistered after."""
    text = (DOCS / "adding-a-method.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    path = tmp_path / "serverstep_example.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("serverstep_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        ALGORITHMS.pop("serverstep", None)
        SETTINGS.pop("serverstep", None)
        sys.modules.pop(spec.name, None)


def global_adapter(tmp_path, method: str, **settings) -> dict[str, torch.Tensor]:
    cfg = vader_tiny_config(fed={"rounds": 1}, data={"train_per_client": 4, "test_per_client": 2},
                            eval={"zero_shot": False})
    cfg.method = method
    for key, value in settings.items():
        setattr(cfg.settings_of(method), key, value)
    out = tmp_path / f"{method}-{settings}"
    run_simulation(cfg, out, progress=False, reports=False)
    return load_file(str(out / "adapters" / "global" / "adapter_model.safetensors"))


def test_the_worked_example_method_runs_and_does_what_the_doc_says(serverstep, tmp_path, tiny, capsys):
    assert main(["methods"]) == 0 and "serverstep" in capsys.readouterr().out
    assert main(["run", "--out", str(tmp_path / "bad"), "--set", "method=serverstep",
                 "--set", "serverstep.server_lr=3"]) == 2
    assert "serverstep.server_lr" in capsys.readouterr().err

    fedit = global_adapter(tmp_path, "fedit")
    full = global_adapter(tmp_path, "serverstep", server_lr=1.0)
    half = global_adapter(tmp_path, "serverstep", server_lr=0.5)
    start = ALGORITHMS["fedit"](vader_tiny_config()).init_global(tiny[0])  # the run's round-1 global adapter
    assert all(torch.allclose(full[k], fedit[k], atol=1e-7) for k in fedit)
    assert all(torch.allclose(half[k], start[k] + 0.5 * (fedit[k] - start[k]), atol=1e-7) for k in fedit)
    assert any(not torch.allclose(half[k], fedit[k]) for k in fedit)
