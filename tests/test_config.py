import tomllib

import pytest

from fedoa.cli import main
from fedoa.cli.config import annotated_toml, describe_keys
from fedoa.config import (
    RunConfig,
    config_to_toml,
    default_config_path,
    load_config,
    parse_override,
)
from fedoa.errors import ConfigError
from fedoa.registry import SETTINGS


def test_default_config_loads_and_round_trips(tmp_path):
    cfg = load_config(default_config_path())
    assert cfg.method == "fedoa" and cfg.data.source == "vader"
    for render in (annotated_toml, config_to_toml):
        path = tmp_path / "c.toml"
        path.write_text(render(cfg))
        assert load_config(path) == cfg


def test_every_shipped_preset_only_overrides_code_defaults_and_loads_by_name():
    from fedoa.config import presets

    code = RunConfig().to_dict()
    assert {"default", "reference"} <= set(presets())
    for name, path in presets().items():
        for section, values in tomllib.loads(path.read_text()).items():
            for key, value in (values.items() if isinstance(values, dict) else [(None, values)]):
                restated = code[section] == value if key is None else code[section][key] == value
                assert not restated, f"{name}: {section}.{key} restates the code default {value!r}"
        sets = ["data.path=/srv/flan8"] if name == "reference" else []  # it names no data folder of its own
        assert load_config(name, sets) == load_config(path, sets)
    with pytest.raises(ConfigError, match="data.path"):
        load_config("reference")  # a shipped preset never points into a folder beside the checkout
    ref = load_config("reference", ["data.path=/srv/flan8"])  # the FedOA reference's local schedule
    assert (ref.train.epochs, ref.train.batch_size, ref.train.micro_batch_size, ref.train.lr) == (3, 128, 8, 3e-4)
    assert (ref.model.max_length, ref.data.template, ref.train.schedule) == (512, "alpaca", "linear")
    with pytest.raises(ConfigError, match="shipped presets, by name: default, reference"):
        load_config("no-such-preset")


def test_every_method_registers_its_settings_beside_its_code():
    cfg = RunConfig()
    assert set(SETTINGS) == {"fedoa", "fedsdr", "fedprox", "ditto", "pfedme", "feddpa", "fedlora", "perada"}
    for name, cls in SETTINGS.items():
        assert cls.__module__ == f"fedoa.algorithms.{name}"
        assert isinstance(cfg.settings_of(name), cls)


def test_overrides_are_typed():
    cfg = load_config(None, ["train.lr=1e-3", "lora.target_modules=['q_proj']", "data.template=plain", "fed.rounds=5"])
    assert cfg.train.lr == 1e-3 and cfg.lora.target_modules == ["q_proj"]
    assert cfg.data.template == "plain" and cfg.fed.rounds == 5
    assert load_config(None, ["lora.alpha=16"]).lora.alpha == 16.0  # an int is a valid float
    assert parse_override("a.b=hello") == {"a": {"b": "hello"}}


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lrr=1", "train.lrr"),
        ("train.lr=fast", "train.lr"),
        ("train.lr=inf", "train.lr"),
        ("train.lr=nan", "train.lr"),
        ("fedoa.regular_weight=nan", "fedoa.regular_weight"),
        ("fedoa.regular_weight=-1", "fedoa.regular_weight"),
        ("lora.alpha=0", "lora.alpha"),
        ("lora.alpha=-8", "lora.alpha"),
        ("lora.r=0", "lora.r"),
        ("lora.target_modules=[]", "lora.target_modules"),
        ("fed.rounds=2.5", "fed.rounds"),
        ("fed.rounds=true", "fed.rounds"),
        ("train.max_steps=-1", "train.max_steps"),
        ("data.train_per_client=-5", "data.train_per_client"),
        ("train.warmup_steps=-1", "train.warmup_steps"),
        ("fedoa.distance=manhattan", "fedoa.distance"),
        ("nosuchsection.x=1", "nosuchsection"),
        ("fed.client_fraction=0", "fed.client_fraction"),
        ("train.batch_size=6", "train.batch_size"),
        ("fed.personal_start_round=4", "fed.personal_start_round"),  # > fed.rounds = 3: untrained P
        ("pfedme.eta=0.5", "pfedme.eta"),  # eta * lam > 1
        ("model.device=quantum", "model.device"),
        ("method=fedsgd", "method"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert key in str(e.value)
    assert "\n" not in str(e.value)


def test_personal_start_after_the_last_round_is_fine_without_personal_adapters():
    assert load_config(None, ["method=fedit", "fed.personal_start_round=9"]).method == "fedit"


def test_bad_file_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = 'x'\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "bad.toml" in str(e.value) and "train.lr" in str(e.value)
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\n")
    with pytest.raises(ConfigError, match="broken.toml"):
        load_config(broken)
    with pytest.raises(ConfigError, match="missing.toml"):
        load_config(tmp_path / "missing.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"[train]\nlr = \xff\n")
    with pytest.raises(ConfigError, match="binary.toml.*UTF-8"):
        load_config(binary)


def test_every_field_has_help():
    keys = describe_keys(RunConfig())
    assert len(keys) > 60
    for key, tp, default, value, text in keys:
        assert text, f"{key} has no help text"


def test_fedoa_config_prints_what_a_run_uses(tmp_path, capsys):
    partial = tmp_path / "partial.toml"
    partial.write_text("[train]\nlr = 0.01\n")  # a partial file: everything else at the code defaults
    assert main(["config", "--config", str(partial), "--set", "fed.rounds=4"]) == 0
    printed = capsys.readouterr().out
    assert "# Peak AdamW learning rate" in printed  # each key with its help
    (tmp_path / "printed.toml").write_text(printed)
    used = load_config(partial, ["fed.rounds=4"])
    assert load_config(tmp_path / "printed.toml") == used
    assert used.train.lr == 0.01 and used.model.max_length == RunConfig().model.max_length

    assert main(["config", "--keys"]) == 0
    keys = capsys.readouterr().out
    assert "model.max_length = 128  (code default 256)" in keys  # the preset's value, and the code's


def test_a_bad_value_exits_2_with_one_line(capsys):
    assert main(["config", "--set", "train.lr=inf"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedoa: error:") and "train.lr" in err and len(err.splitlines()) == 1
