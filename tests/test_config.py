import pytest

from fedoa.config import RunConfig, config_to_toml, default_config_path, load_config, parse_override
from fedoa.errors import ConfigError


def test_default_config_loads_and_round_trips(tmp_path):
    cfg = load_config(default_config_path())
    assert cfg.method == "fedoa" and cfg.data.source == "vader"
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(cfg))
    assert load_config(path) == cfg


def test_overrides_are_typed():
    cfg = load_config(None, ["train.lr=1e-3", "lora.target_modules=['q_proj']", "data.template=plain", "fed.rounds=5"])
    assert cfg.train.lr == 1e-3 and cfg.lora.target_modules == ["q_proj"]
    assert cfg.data.template == "plain" and cfg.fed.rounds == 5
    assert parse_override("a.b=hello") == {"a": {"b": "hello"}}


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lrr=1", "train.lrr"),
        ("train.lr=fast", "train.lr"),
        ("fed.rounds=2.5", "fed.rounds"),
        ("fedoa.distance=manhattan", "fedoa.distance"),
        ("nosuchsection.x=1", "nosuchsection"),
        ("fed.client_fraction=0", "fed.client_fraction"),
        ("train.batch_size=6", "train.batch_size"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert key in str(e.value)


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


def test_every_field_has_help():
    import dataclasses

    for f in dataclasses.fields(RunConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        subs = dataclasses.fields(default) if dataclasses.is_dataclass(default) else [f]
        for sub in subs:
            assert sub.metadata.get("help"), f"{f.name}.{sub.name} has no help text"
