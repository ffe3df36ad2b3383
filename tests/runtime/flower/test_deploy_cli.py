"""``fedoa deploy``: generated files and commands, checked without starting any daemon."""
from __future__ import annotations

import tomllib

import pytest

from fedoa.cli import main
from fedoa.errors import FedoaError
from fedoa.runtime.flower.deploy import (
    node_config_arg,
    superlink_command,
    supernode_command,
    toml_value,
    write_connection,
)


@pytest.mark.parametrize("text", ['plain', 'a "quoted" \\ back\\slash', "new\nline\ttab", "del\x7fctl\x01", "ünïcode ✓ 😀"])
def test_toml_strings_round_trip(text):
    assert tomllib.loads(f"v = {toml_value(text)}")["v"] == text


def test_node_config_text_parses_back_with_flowers_own_parser():
    from flwr.common.config import parse_config_args

    values = {"client-name": "movie", "data-path": "/data/my site/movie", "state-dir": "C:\\state", "eval-path": "it's"}
    assert parse_config_args([node_config_arg(values)]) == values


def test_insecure_is_refused_off_loopback(tmp_path):
    assert "--insecure" in superlink_command("127.0.0.1", 8000, insecure=True)
    with pytest.raises(FedoaError, match="loopback"):
        superlink_command("0.0.0.0", 8000, insecure=True)
    with pytest.raises(FedoaError, match="ssl-certfile"):
        superlink_command("0.0.0.0", 8000)
    with pytest.raises(FedoaError, match="--insecure only"):
        supernode_command("10.0.0.5:8000", 9094, {"client-name": "a"}, insecure=True)
    with pytest.raises(FedoaError, match="root-certificates"):
        supernode_command("10.0.0.5:8000", 9094, {"client-name": "a"})
    with pytest.raises(FedoaError, match="loopback"):
        write_connection(tmp_path, "10.0.0.5:8000", insecure=True, root_certificates=None)
    cmd = superlink_command("127.0.0.1", 8123, insecure=True)
    assert "--disable-runtime-dependency-installation" in cmd and cmd[cmd.index("--port") + 1] == "8123"
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    write_connection(tmp_path / "home", "10.0.0.5:8000", insecure=False, root_certificates=str(ca))
    conf = tomllib.loads((tmp_path / "home" / "config.toml").read_text())
    assert conf["superlink"]["default"] == "fedoa"
    assert conf["superlink"]["fedoa"] == {"address": "10.0.0.5:8000", "root-certificates": str(ca)}


def test_deploy_app_writes_a_valid_flower_app(tmp_path, capsys):
    from flwr.common.config import validate_config

    rc = main(["deploy", "app", "--app-dir", str(tmp_path / "app"), "--out", str(tmp_path / "out"), "--nodes", "4",
               "--set", "fed.rounds=2", "--eval-path", "embedded:vader"])
    assert rc == 0
    conf = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())
    ok, errors, _ = validate_config(conf, check_module=True)
    assert ok, errors
    run = conf["tool"]["flwr"]["app"]["config"]
    assert run["num-nodes"] == 4 and run["eval-path"] == "embedded:vader" and run["out-dir"] == str(tmp_path / "out")
    assert "rounds = 2" in run["fedoa-config"]
    assert sorted(p.name for p in (tmp_path / "app").iterdir()) == ["pyproject.toml"]  # no code, no data in the FAB


def test_deploy_commands_reject_bad_input_before_starting_anything(tmp_path, capsys):
    assert main(["deploy", "supernode", "--client-name", "a", "--data-path", str(tmp_path / "missing"), "--insecure"]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert main(["deploy", "supernode", "--client-name", "../x", "--vader-domain", "movie", "--insecure"]) == 2
    assert main(["deploy", "superlink", "--host", "0.0.0.0", "--insecure"]) == 2
    assert "loopback" in capsys.readouterr().err
    assert main(["deploy", "results", "--out", str(tmp_path)]) == 2
