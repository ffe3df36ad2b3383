"""Launching Flower's processes for fedoa: the commands, their environment, submitting and
following a run. The command line (:mod:`fedoa.cli.deploy`) only parses arguments and calls these.

Thin wrappers around Flower's own commands (``flower-superlink``, ``flower-supernode``,
``flwr run/log/ls/stop``) that fill in what fedoa needs:

- every Flower process gets ``FLWR_HOME`` (fedoa's own, ``--flwr-home``; default
  ``<fedoa cache>/flower``), ``FLWR_TELEMETRY_ENABLED=0`` and ``FLWR_DISABLE_UPDATE_CHECK=1``;
- the SuperLink never builds per-run environments (``--disable-runtime-dependency-installation``):
  the apps run in this installed environment; it writes results only under its ``--output-root``;
- one rule for every channel (:func:`check_channel`): plain text only on loopback, TLS everywhere else;
- off loopback, SuperNodes must authenticate (``--enable-supernode-auth`` is always on, a node needs
  its key), and the Control API (which shares the SuperLink's port in Flower 1.42) is served only
  with account authentication (OIDC, which needs Flower's ``flwr.ee``) or with an explicit
  ``--allow-unauthenticated-control-api`` (:func:`check_control_api`);
- the app is a Flower project generated from the settings classes (:func:`fedoa.runtime.flower.runconfig.app_dir`);
  a run's settings travel as Flower run-config keys (only those that differ from the app's defaults);
- ``flwr run`` exits 0 even when the run failed, so the real status is read with ``flwr ls``.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w

from fedoa.errors import FedoaError
from fedoa.io import write_text

CONNECTION = "fedoa"
DEFAULT_PORT = 8000


class DeployCliError(FedoaError):
    """A ``fedoa deploy`` argument cannot work (insecure on a network address, missing files)."""


def node_config_arg(values: dict[str, Any]) -> str:
    """``--node-config`` text: ``key="value" ...`` (Flower splits on spaces outside quotes and
    does not allow the quote character inside a value)."""
    parts = []
    for k, v in values.items():
        if isinstance(v, str):
            if "'" not in v and "\n" not in v:
                text = f"'{v}'"  # a TOML literal string: backslashes (Windows paths) stay as they are
            elif '"' not in v and "\\" not in v and "\n" not in v:
                text = f'"{v}"'
            else:
                raise DeployCliError(f"node-config value of {k} cannot hold both ' and \" (or a newline): {v!r}")
        else:
            text = tomli_w.dumps({"v": v}).split("=", 1)[1].strip()
        parts.append(f"{k}={text}")
    return " ".join(parts)


# ---------------------------------------------------------------------------- environment


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_channel(host: str, insecure: bool, tls: bool, needs: str, where: str) -> None:
    """The one transport-security rule: plain text only on loopback, TLS everywhere else
    (``needs`` names what TLS takes on this end of the channel)."""
    if insecure and not is_loopback(host):
        raise DeployCliError(f"--insecure only on loopback (127.0.0.1); {host} needs {needs} (see docs/deployment.md)",
                             where="--insecure")
    if not insecure and not tls and not is_loopback(host):
        raise DeployCliError(f"{host} is not loopback: TLS needs {needs}", where=where)


def account_auth_available() -> bool:
    """Whether this Flower can authenticate Control API accounts (OIDC: only with ``flwr.ee``)."""
    try:
        from flwr.superlink.auth_plugin import AuthnType
        from flwr.superlink.config_loader import get_control_authn_plugins

        return AuthnType.OIDC in get_control_authn_plugins()
    except Exception:  # noqa: BLE001
        return False


def check_control_api(host: str, allow_unauthenticated: bool) -> dict[str, str]:
    """The environment the SuperLink needs for its Control API (submit, stop, register node keys).

    On loopback nothing. Elsewhere Flower's account authentication (``FLWR_OIDC_ENABLED=1``) when
    this Flower has it; without it the SuperLink is refused unless the operator explicitly accepts
    that anyone who reaches the port (and trusts the CA) can submit and stop runs and register keys."""
    if is_loopback(host):
        return {}
    if account_auth_available():
        return {"FLWR_OIDC_ENABLED": "1"}
    if not allow_unauthenticated:
        raise DeployCliError(
            f"Flower's Control API shares port with the Fleet API and this Flower has no account authentication "
            f"(OIDC needs flwr.ee): on {host} anyone who reaches the port could submit or stop runs and register "
            "node keys; refusing (firewall the port to the sites and pass --allow-unauthenticated-control-api, "
            "see docs/deployment.md)", where="--host")
    return {}


CA_FILE = "--root-certificates CA.pem"
SERVER_TLS = "--ssl-certfile, --ssl-keyfile and --ssl-ca-certfile"


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise DeployCliError(f"expected HOST:PORT, got {address!r}", where="--superlink")
    return host, int(port)


def default_flwr_home() -> Path:
    from fedoa.paths import cache_dir

    return cache_dir() / "flower"


def executable(name: str) -> str:
    """A Flower command from this environment (the venv that runs fedoa), else from PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise DeployCliError(f"{name} not found: is flwr installed in this environment?")
    return found


def flower_env(flwr_home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    # a node's SuperExec looks for new messages every second by default: a tenth of that costs
    # nothing (a local HTTP call) and takes ~0.5 s off every message exchange
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def write_connection(flwr_home: Path, address: str, insecure: bool, root_certificates: str | None) -> None:
    """``FLWR_HOME/config.toml`` with the ``fedoa`` SuperLink connection (fedoa's own FLWR_HOME)."""
    host, _ = split_address(address)
    check_channel(host, insecure, bool(root_certificates), CA_FILE, "--superlink")
    connection: dict[str, Any] = {"address": address}
    if insecure:
        connection["insecure"] = True
    elif root_certificates:
        ca = Path(root_certificates).expanduser().resolve()
        if not ca.is_file():
            raise DeployCliError("file not found", where=str(ca))
        connection["root-certificates"] = str(ca)
    write_text(flwr_home / "config.toml", tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}}))


# ---------------------------------------------------------------------------- commands


def superlink_command(
    host: str = "127.0.0.1", port: int = DEFAULT_PORT, insecure: bool = False,
    ssl_certfile: str | None = None, ssl_keyfile: str | None = None, ssl_ca_certfile: str | None = None,
    enable_supernode_auth: bool = False, database: str | None = None, allow_unauthenticated_control_api: bool = False,
) -> list[str]:
    cmd = [executable("flower-superlink"), "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    files = {"--ssl-certfile": ssl_certfile, "--ssl-keyfile": ssl_keyfile, "--ssl-ca-certfile": ssl_ca_certfile}
    check_channel(host, insecure, all(files.values()), SERVER_TLS, "--host")
    check_control_api(host, allow_unauthenticated_control_api)
    if not is_loopback(host):
        enable_supernode_auth = True  # off loopback only registered nodes join
    if insecure:
        cmd.append("--insecure")
    else:
        if not all(files.values()):
            raise DeployCliError(f"TLS needs {SERVER_TLS} (or --insecure on 127.0.0.1)")
        for flag, path in files.items():
            if not Path(path).expanduser().is_file():
                raise DeployCliError("file not found", where=f"{flag} {path}")
            cmd += [flag, str(Path(path).expanduser().resolve())]
    if enable_supernode_auth:
        cmd.append("--enable-supernode-auth")
    if database:
        cmd += ["--database", database]
    return cmd


def supernode_command(
    superlink: str, port: int, node_config: dict[str, Any], insecure: bool = False,
    root_certificates: str | None = None, auth_private_key: str | None = None,
) -> list[str]:
    host, _ = split_address(superlink)
    # Flower's own flower-supernode, looking for messages every 0.25 s instead of 3 s (runtime/flower/supernode.py)
    cmd = [sys.executable, "-m", "fedoa.runtime.flower.supernode", "--superlink", superlink, "--port", str(port),
           "--node-config", node_config_arg(node_config)]
    check_channel(host, insecure, bool(root_certificates), CA_FILE, "--superlink")
    if not is_loopback(host) and not auth_private_key:
        raise DeployCliError(f"{host} is not loopback: node authentication is on there, give this node's key "
                             "(ssh-keygen -t ecdsa -b 384; registered with fedoa deploy register)",
                             where="--auth-private-key")
    if insecure:
        cmd.append("--insecure")
    elif root_certificates:
        cmd += ["--root-certificates", str(Path(root_certificates).expanduser().resolve())]
    if auth_private_key:
        cmd += ["--auth-supernode-private-key", str(Path(auth_private_key).expanduser().resolve())]
    return cmd


def flwr(args: list[str], flwr_home: Path, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [executable("flwr"), *args], env=flower_env(flwr_home), capture_output=True, text=True, timeout=timeout
    )


def _json_out(proc: subprocess.CompletedProcess, what: str) -> dict[str, Any]:
    """The JSON object a ``flwr ... --format json`` printed (possibly over several lines)."""
    text = proc.stdout
    decoder = json.JSONDecoder()
    found = None
    for i, ch in enumerate(text):
        if ch == "{" and (i == 0 or text[i - 1] == "\n"):
            try:
                found, _ = decoder.raw_decode(text[i:])
            except json.JSONDecodeError:
                continue
    if isinstance(found, dict):
        return found
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    raise DeployCliError(f"{what} failed (exit {proc.returncode}): " + " | ".join(tail))


def submit(app_dir: Path, flwr_home: Path, run_config: dict[str, Any]) -> int:
    """``flwr run APP fedoa --run-config overrides.toml`` -> the run id."""
    from fedoa.runtime.flower.runconfig import nest

    nested = nest(run_config)
    with tempfile.TemporaryDirectory(prefix="fedoa-run-") as tmp:
        overrides = Path(tmp) / "overrides.toml"
        overrides.write_text(tomli_w.dumps(nested), encoding="utf-8")
        cmd = ["run", str(app_dir), CONNECTION, "--format", "json"] + (["--run-config", str(overrides)] if nested else [])
        out = _json_out(flwr(cmd, flwr_home), "flwr run")
    if not out.get("success") or not out.get("run-id"):
        raise DeployCliError(f"flwr run did not start a run: {out}")
    return int(out["run-id"])


def run_status(run_id: int, flwr_home: Path) -> dict[str, Any]:
    """``{"status": "finished:completed", ...}`` of one run, from ``flwr ls`` (the real status)."""
    out = _json_out(flwr(["ls", CONNECTION, "--run-id", str(run_id), "--format", "json"], flwr_home), "flwr ls")
    runs = out.get("runs") or []
    if not runs:
        raise DeployCliError(f"the SuperLink knows no run {run_id}: {out}")
    return runs[0]


def follow(run_id: int, flwr_home: Path, poll: float = 2.0, logs: bool = True, timeout: float = 0.0) -> dict[str, Any]:
    """Wait for the run to finish and return its status from ``flwr ls``.

    One ``flwr log --stream`` does the waiting (shown only with ``logs``): the SuperLink ends the
    stream when the run finishes. Polling ``flwr ls`` instead started a Flower CLI process every few
    seconds for the whole run, each about a core-second, taken from the nodes' training when they
    share the machine. Should the stream end early (a dropped connection), ``flwr ls`` is polled."""
    deadline = time.monotonic() + timeout if timeout > 0 else None
    quiet = {} if logs else {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen([executable("flwr"), "log", str(run_id), CONNECTION, "--stream"],
                            env=flower_env(flwr_home), **quiet)
    try:
        proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise DeployCliError(f"run {run_id} did not finish within {timeout:g} s") from None
    finally:
        if proc.poll() is None:
            proc.terminate()  # a log tail: nothing to lose; it does not always exit on SIGTERM at once
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    while not str((status := run_status(run_id, flwr_home)).get("status", "")).startswith("finished"):
        if deadline is not None and time.monotonic() > deadline:
            raise DeployCliError(f"run {run_id} did not finish within {timeout:g} s")
        time.sleep(poll)
    return status
