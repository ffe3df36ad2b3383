"""``fedoa deploy``: generated files and commands, checked without starting any daemon."""
from __future__ import annotations

import tomllib

import pytest

from fedoa.cli import main
from fedoa.runtime.flower.launch import (
    node_config_arg,
    superlink_command,
    supernode_command,
    write_connection,
)
from fedoa.errors import FedoaError


def test_node_config_text_parses_back_with_flowers_own_parser():
    from flwr.common.config import parse_config_args

    values = {"client-name": "movie", "data-path": "/data/my site/movie", "state-dir": "C:\\state", "eval-path": "it's",
              "lora-rank": 4}
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


def test_the_generated_flower_app_is_valid_and_lists_every_key(capsys):
    from flwr.common.config import validate_config

    from fedoa.runtime.flower.runconfig import app_config, app_dir, app_pyproject, unflatten

    assert main(["deploy", "app"]) == 0
    folder = app_dir()
    assert capsys.readouterr().out.strip() == str(folder)
    text = (folder / "pyproject.toml").read_text()
    assert text == app_pyproject()
    conf = tomllib.loads(text)
    ok, errors, _ = validate_config(conf, check_module=True)
    assert ok, errors
    assert sorted(p.name for p in folder.iterdir()) == ["pyproject.toml"]  # no code, no data in the FAB
    from flwr.common.config import flatten_dict

    flat = flatten_dict(conf["tool"]["flwr"]["app"]["config"])  # as Flower hands it to the apps
    assert flat == app_config()
    cfg, deploy = unflatten(flat)
    assert cfg.data.source == "vader" and cfg.model.max_length == 128  # the embedded default preset


def test_a_run_sends_only_the_keys_that_differ(tmp_path):
    from fedoa.cli import build_parser
    from fedoa.cli.deploy import _run_settings
    from fedoa.runtime.flower.runconfig import overrides

    args = build_parser().parse_args(["deploy", "run", "--out", "r1", "--nodes", "4", "--set", "fed.rounds=2",
                                      "--eval-path", "embedded:vader", "--min-nodes", "3"])
    cfg, deploy = _run_settings(args)
    assert overrides(cfg, deploy) == {"fed.rounds": 2, "fed.min_clients": 3, "deploy.out-dir": "r1",
                                      "deploy.num-nodes": 4, "deploy.eval-path": "embedded:vader"}
    bad = build_parser().parse_args(["deploy", "run", "--out", str(tmp_path), "--nodes", "1"])
    with pytest.raises(FedoaError, match="folder name"):
        _run_settings(bad)


def test_deploy_commands_reject_bad_input_before_starting_anything(tmp_path, capsys):
    assert main(["deploy", "supernode", "--client-name", "a", "--data-path", str(tmp_path / "missing"), "--insecure"]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert main(["deploy", "supernode", "--client-name", "../x", "--vader-domain", "movie", "--insecure"]) == 2
    assert main(["deploy", "superlink", "--host", "0.0.0.0", "--insecure"]) == 2
    assert "loopback" in capsys.readouterr().err
    assert main(["deploy", "results", "--out", str(tmp_path)]) == 2


def test_off_loopback_nodes_authenticate_and_the_control_api_is_not_served_unauthenticated(tmp_path, monkeypatch):
    from fedoa.runtime.flower import launch

    tls = {}
    for name in ("cert", "key", "ca"):
        (tmp_path / name).write_text("x")
        tls[name] = str(tmp_path / name)
    args = dict(ssl_certfile=tls["cert"], ssl_keyfile=tls["key"], ssl_ca_certfile=tls["ca"])
    monkeypatch.setattr(launch, "account_auth_available", lambda: False)  # Flower 1.42 without flwr.ee
    assert launch.account_auth_available() is False
    with pytest.raises(FedoaError, match="Control API .* no account authentication"):
        superlink_command("0.0.0.0", 8000, **args)
    cmd = superlink_command("0.0.0.0", 8000, **args, allow_unauthenticated_control_api=True)
    assert "--enable-supernode-auth" in cmd  # always on off loopback, asked for or not
    assert "--enable-supernode-auth" not in superlink_command("127.0.0.1", 8000, insecure=True)
    assert launch.check_control_api("127.0.0.1", False) == {}
    monkeypatch.setattr(launch, "account_auth_available", lambda: True)  # a Flower with OIDC (flwr.ee)
    assert launch.check_control_api("10.0.0.5", False) == {"FLWR_OIDC_ENABLED": "1"}
    with pytest.raises(FedoaError, match="auth-private-key"):
        supernode_command("10.0.0.5:8000", 9094, {"client-name": "a"}, root_certificates=tls["ca"])
    assert "--auth-supernode-private-key" in supernode_command("10.0.0.5:8000", 9094, {"client-name": "a"},
                                                               root_certificates=tls["ca"], auth_private_key=tls["key"])


def test_the_installed_flower_has_no_control_api_account_authentication():
    """What check_control_api relies on: Flower 1.42 without flwr.ee offers OIDC nowhere."""
    from fedoa.runtime.flower.launch import account_auth_available

    assert account_auth_available() is False


def test_a_run_against_a_superlink_off_loopback_binds_client_names_to_keys_by_default():
    from fedoa.cli import build_parser
    from fedoa.cli.deploy import _run_settings

    remote = build_parser().parse_args(["deploy", "run", "--out", "r", "--nodes", "2", "--superlink", "10.0.0.5:8000"])
    local = build_parser().parse_args(["deploy", "run", "--out", "r", "--nodes", "2"])
    assert _run_settings(remote)[1].node_auth is True and _run_settings(local)[1].node_auth is False
