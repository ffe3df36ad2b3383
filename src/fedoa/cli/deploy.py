"""``fedoa deploy ...``: start a SuperLink or a SuperNode, launch a run, follow it, read results.

Thin wrappers around Flower's own commands (``flower-superlink``, ``flower-supernode``,
``flwr run/log/ls/stop``) that fill in what fedoa needs:

- every Flower process gets ``FLWR_HOME`` (fedoa's own, ``--flwr-home``; default
  ``<fedoa cache>/flower``), ``FLWR_TELEMETRY_ENABLED=0`` and ``FLWR_DISABLE_UPDATE_CHECK=1``;
- the SuperLink never builds per-run environments (``--disable-runtime-dependency-installation``):
  the apps run in this installed environment; it writes results only under its ``--output-root``;
- ``--insecure`` is accepted only for a loopback address; anything else needs TLS certificates;
- the app is the checked-in Flower project (``fedoa deploy app`` prints its folder); a run's
  settings travel as Flower run-config keys (only those that differ from the app's defaults);
- ``flwr run`` exits 0 even when the run failed, so the real status is read with ``flwr ls``.
"""
from __future__ import annotations

import argparse
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
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def write_connection(flwr_home: Path, address: str, insecure: bool, root_certificates: str | None) -> None:
    """``FLWR_HOME/config.toml`` with the ``fedoa`` SuperLink connection (fedoa's own FLWR_HOME)."""
    host, _ = split_address(address)
    if insecure and not is_loopback(host):
        raise DeployCliError(
            f"--insecure is only for a SuperLink on this machine (loopback); {host} needs TLS: "
            "give --root-certificates CA.pem (see docs/deployment.md)", where="--insecure",
        )
    if not insecure and not root_certificates and not is_loopback(host):
        raise DeployCliError("a SuperLink on the network needs --root-certificates CA.pem", where="--superlink")
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
    enable_supernode_auth: bool = False, database: str | None = None,
) -> list[str]:
    cmd = [executable("flower-superlink"), "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    if insecure:
        if not is_loopback(host):
            raise DeployCliError(
                f"--insecure only on loopback (127.0.0.1); a SuperLink on {host} needs --ssl-certfile, "
                "--ssl-keyfile and --ssl-ca-certfile", where="--insecure",
            )
        cmd.append("--insecure")
    else:
        files = {"--ssl-certfile": ssl_certfile, "--ssl-keyfile": ssl_keyfile, "--ssl-ca-certfile": ssl_ca_certfile}
        if not all(files.values()):
            raise DeployCliError(
                "TLS needs --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile (or --insecure on 127.0.0.1)"
            )
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
    cmd = [executable("flower-supernode"), "--superlink", superlink, "--port", str(port),
           "--node-config", node_config_arg(node_config)]
    if insecure:
        if not is_loopback(host):
            raise DeployCliError(
                f"--insecure only for a SuperLink on 127.0.0.1; {host} needs --root-certificates", where="--insecure"
            )
        cmd.append("--insecure")
    elif root_certificates:
        cmd += ["--root-certificates", str(Path(root_certificates).expanduser().resolve())]
    elif not is_loopback(host):
        raise DeployCliError("a SuperLink on the network needs --root-certificates CA.pem", where="--superlink")
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


def follow(run_id: int, flwr_home: Path, poll: float = 3.0, logs: bool = True, timeout: float = 0.0) -> dict[str, Any]:
    """Stream the run's log (``flwr log --stream``) until ``flwr ls`` says it finished."""
    proc = None
    if logs:
        proc = subprocess.Popen([executable("flwr"), "log", str(run_id), CONNECTION, "--stream"], env=flower_env(flwr_home))
    deadline = time.monotonic() + timeout if timeout > 0 else None
    try:
        while True:
            status = run_status(run_id, flwr_home)
            if str(status.get("status", "")).startswith("finished"):
                time.sleep(1.0 if logs else 0.0)  # let the last log lines through
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise DeployCliError(f"run {run_id} did not finish within {timeout:g} s")
            time.sleep(poll)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------------------- CLI


def _flwr_home(args) -> Path:
    return Path(args.flwr_home).expanduser().resolve() if args.flwr_home else default_flwr_home()


def _exec(cmd: list[str], flwr_home: Path) -> int:
    flwr_home.mkdir(parents=True, exist_ok=True)
    print("fedoa: " + " ".join(cmd), file=sys.stderr, flush=True)
    os.execve(cmd[0], cmd, flower_env(flwr_home))
    return 0  # not reached


def cmd_superlink(args) -> int:
    cmd = superlink_command(
        args.host, args.port, args.insecure, args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certfile,
        args.enable_supernode_auth, args.database,
    )
    if args.output_root:  # the ServerApp (a child of the SuperLink) writes results only under it
        root = Path(args.output_root).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        os.environ["FEDOA_OUTPUT_ROOT"] = str(root)
    return _exec(cmd, _flwr_home(args))


def cmd_supernode(args) -> int:
    from fedoa.runtime.flower.node import node_spec

    values: dict[str, Any] = {"client-name": args.client_name}
    if args.data_path:
        path = Path(args.data_path).expanduser().resolve()
        if not path.is_dir():
            raise DeployCliError("data folder not found", where=str(path))
        values["data-path"] = str(path)
    if args.vader_domain:
        values["vader-domain"] = args.vader_domain
    if args.state_dir:
        values["state-dir"] = str(Path(args.state_dir).expanduser().resolve())
    if args.eval_path is not None:
        values["eval-path"] = args.eval_path if args.eval_path in ("", "embedded:vader") else str(
            Path(args.eval_path).expanduser().resolve())
    node_spec(values)  # the node's own checks, before Flower starts
    cmd = supernode_command(args.superlink, args.port, values, args.insecure, args.root_certificates, args.auth_private_key)
    return _exec(cmd, _flwr_home(args))


def _run_settings(args):
    """The run's config (every key) and deployment settings from the command line."""
    from fedoa.config import default_config_path, load_config
    from fedoa.runtime.flower.runconfig import DeploySettings

    overrides = list(args.set or [])
    if args.min_nodes:
        overrides.append(f"fed.min_clients={args.min_nodes}")
    cfg = load_config(args.config or default_config_path(), overrides)
    if Path(args.out).is_absolute():
        raise DeployCliError("give a folder name: the SuperLink writes under its own --output-root", where="--out")
    eval_path = args.eval_path or ""
    if eval_path and eval_path != "embedded:vader":
        eval_path = str(Path(eval_path).expanduser().resolve())
    deploy = DeploySettings(
        out_dir=args.out, num_nodes=args.nodes, eval_path=eval_path, round_timeout=args.round_timeout,
        eval_timeout=args.eval_timeout, join_timeout=args.join_timeout, fresh=args.fresh, node_auth=args.node_auth,
    )
    return cfg, deploy


def cmd_app(args) -> int:
    from fedoa.runtime.flower.runconfig import APP_DIR, app_pyproject

    if args.write:
        write_text(APP_DIR / "pyproject.toml", app_pyproject())
    print(APP_DIR)
    return 0


def cmd_run(args) -> int:
    from fedoa.runtime.flower.runconfig import APP_DIR, overrides

    home = _flwr_home(args)
    write_connection(home, args.superlink, args.insecure, args.root_certificates)
    cfg, deploy = _run_settings(args)
    run_id = submit(APP_DIR, home, overrides(cfg, deploy))
    out = Path(args.output_root).expanduser().resolve() / args.out if args.output_root else None
    print(f"fedoa: started run {run_id} on {args.superlink}; results go to {args.out} under the SuperLink's "
          "output root", flush=True)
    if args.detach:
        print(f"follow it with: fedoa deploy log {run_id}; status: fedoa deploy status {run_id}")
        return 0
    try:
        status = follow(run_id, home, logs=not args.no_logs, timeout=args.timeout)
    except KeyboardInterrupt:
        print(f"\nfedoa: stopped following; run {run_id} goes on on the SuperLink "
              f"(fedoa deploy log {run_id} / status {run_id} / stop {run_id})", file=sys.stderr)
        return 130
    return _finish(run_id, status, out)


def _finish(run_id: int, status: dict[str, Any], out: Path | None) -> int:
    state = status.get("status", "")
    print(f"fedoa: run {run_id}: {state}" + (f" ({status['status-details']})" if status.get("status-details") else ""))
    if state == "finished:completed" and out is not None and (out / "results.json").is_file():
        _print_results(out)
    return 0 if state == "finished:completed" else 1


def _print_results(out: Path) -> None:
    from fedoa.reports.markdown import print_summary
    from fedoa.reports.results import Results

    results = Results.load(out / "results.json")
    print_summary(results)
    for line in results.failures:
        print(f"failure: {line}")
    print(f"results in {out}/results.json, report in {out}/report.md")


def cmd_status(args) -> int:
    home = _flwr_home(args)
    write_connection(home, args.superlink, args.insecure, args.root_certificates)
    status = run_status(args.run_id, home)
    print(json.dumps(status, indent=2))
    state = status.get("status", "")
    return 0 if state == "finished:completed" else (3 if not state.startswith("finished") else 1)


def cmd_log(args) -> int:
    home = _flwr_home(args)
    write_connection(home, args.superlink, args.insecure, args.root_certificates)
    if args.wait:
        return _finish(args.run_id, follow(args.run_id, home), Path(args.out) if args.out else None)
    return _exec([executable("flwr"), "log", str(args.run_id), CONNECTION, "--stream"], home)


def cmd_stop(args) -> int:
    home = _flwr_home(args)
    write_connection(home, args.superlink, args.insecure, args.root_certificates)
    proc = flwr(["stop", str(args.run_id), CONNECTION], home)
    print((proc.stdout + proc.stderr).strip())
    return proc.returncode


def cmd_register(args) -> int:
    home = _flwr_home(args)
    write_connection(home, args.superlink, args.insecure, args.root_certificates)
    key = Path(args.public_key).expanduser().resolve()
    if not key.is_file():
        raise DeployCliError("file not found", where=str(key))
    proc = flwr(["supernode", "register", str(key), CONNECTION], home)
    print((proc.stdout + proc.stderr).strip())
    return proc.returncode


def cmd_results(args) -> int:
    out = Path(args.out)
    if not (out / "results.json").is_file():
        raise DeployCliError("no results.json (the run has not finished, or it ran on another machine: "
                             "copy OUT from the SuperLink's machine)", where=str(out))
    _print_results(out)
    return 0


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--superlink", default=f"127.0.0.1:{DEFAULT_PORT}", help="SuperLink address HOST:PORT")
    p.add_argument("--insecure", action="store_true", help="no TLS (only for a SuperLink on 127.0.0.1)")
    p.add_argument("--root-certificates", help="CA certificate (PEM) that signed the SuperLink's certificate")
    p.add_argument("--flwr-home", help="Flower's home folder for fedoa (default: <fedoa cache>/flower)")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (default: the embedded default config)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key (repeatable)")
    p.add_argument("--out", required=True, help="the run's folder name under the SuperLink's --output-root "
                   "(results.json, report.md ...)")
    p.add_argument("--nodes", type=int, required=True, help="clients (SuperNodes) to wait for before round 1")
    p.add_argument("--min-nodes", type=int, default=0, help="updates a round needs to be aggregated "
                   "(fed.min_clients; default: the config's)")
    p.add_argument("--eval-path", default="", help="shared test sets every node reads for OOD: a folder of "
                   "<category>/<task>_test.jsonl or 'embedded:vader' (default: ID only)")
    p.add_argument("--round-timeout", type=float, default=0.0, help="seconds to wait for a round's replies (0: until "
                   "each node replied or Flower reports it unavailable)")
    p.add_argument("--eval-timeout", type=float, default=0.0, help="the same for the final evaluation")
    p.add_argument("--join-timeout", type=float, default=600.0, help="seconds to wait for --nodes clients")
    p.add_argument("--fresh", action="store_true", help="ignore an unfinished run's checkpoint in OUT")
    p.add_argument("--node-auth", action="store_true", help="the SuperLink authenticates SuperNodes "
                   "(--enable-supernode-auth): bind each client name to its first node's key for the whole run")


def add_parser(sub) -> None:
    """Register ``fedoa deploy ...`` on the main parser's subparsers."""
    deploy = sub.add_parser("deploy", help="run on several machines with Flower's Deployment Engine "
                            "(SuperLink, SuperNodes, runs); see docs/deployment.md")
    dsub = deploy.add_subparsers(dest="deploy_command", required=True)

    p = dsub.add_parser("superlink", help="start the SuperLink (the coordinator) in the foreground")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; needs TLS)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of the Fleet, Control and Runtime APIs")
    p.add_argument("--insecure", action="store_true", help="no TLS (only with --host 127.0.0.1)")
    p.add_argument("--ssl-certfile", help="the SuperLink's certificate (PEM)")
    p.add_argument("--ssl-keyfile", help="the SuperLink's private key (PEM)")
    p.add_argument("--ssl-ca-certfile", help="the CA certificate that signed it (PEM)")
    p.add_argument("--enable-supernode-auth", action="store_true",
                   help="accept only SuperNodes registered with `flwr supernode register`")
    p.add_argument("--database", help="SQLite file for the SuperLink's state (default: in memory)")
    p.add_argument("--output-root", help="the only folder runs write their results under "
                   "(default: <fedoa cache>/deployments)")
    p.add_argument("--flwr-home", help="Flower's home folder (default: <fedoa cache>/flower)")
    p.set_defaults(func=cmd_superlink)

    p = dsub.add_parser("supernode", help="start a SuperNode (one client with its own data) in the foreground")
    p.add_argument("--superlink", default=f"127.0.0.1:{DEFAULT_PORT}", help="SuperLink address HOST:PORT")
    p.add_argument("--port", type=int, default=9094, help="local port for the node's ClientApp processes "
                   "(one per SuperNode on a machine)")
    p.add_argument("--client-name", required=True, help="the client this node is (unique in the federation)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--data-path", help="folder <category>/<task>_{train,test}.jsonl with this client's data")
    g.add_argument("--vader-domain", help="one embedded VADER domain (movie, tweets, amazon, nyt) instead")
    p.add_argument("--state-dir", help="where this client's personal adapters live (default: <fedoa cache>/node-state)")
    p.add_argument("--eval-path", default=None, help="shared test sets on this machine (overrides the run's)")
    p.add_argument("--insecure", action="store_true", help="no TLS (only for a SuperLink on 127.0.0.1)")
    p.add_argument("--root-certificates", help="CA certificate (PEM) that signed the SuperLink's certificate")
    p.add_argument("--auth-private-key", help="this node's private key (with --enable-supernode-auth on the SuperLink)")
    p.add_argument("--flwr-home", help="Flower's home folder (default: <fedoa cache>/flower)")
    p.set_defaults(func=cmd_supernode)

    p = dsub.add_parser("run", help="launch a run on the SuperLink and follow it until it finishes")
    _run_args(p)
    _connection_args(p)
    p.add_argument("--output-root", help="the SuperLink's --output-root, when it is on this machine: print the "
                   "results at the end")
    p.add_argument("--detach", action="store_true", help="return once the run is started")
    p.add_argument("--no-logs", action="store_true", help="do not stream the ServerApp's log")
    p.add_argument("--timeout", type=float, default=0.0, help="give up following after this many seconds (0: never)")
    p.set_defaults(func=cmd_run)

    p = dsub.add_parser("app", help="print the folder of the checked-in Flower app (for `flwr run` by hand)")
    p.add_argument("--write", action="store_true", help="regenerate its pyproject.toml from the settings classes")
    p.set_defaults(func=cmd_app)

    for name, func, help_ in (
        ("status", cmd_status, "the real status of a run (exit 0 completed, 1 failed/stopped, 3 not finished)"),
        ("log", cmd_log, "stream a run's log"),
        ("stop", cmd_stop, "stop a run"),
    ):
        p = dsub.add_parser(name, help=help_)
        p.add_argument("run_id", type=int)
        _connection_args(p)
        if name == "log":
            p.add_argument("--wait", action="store_true", help="follow until the run finishes, then print its status")
            p.add_argument("--out", help="with --wait: print the results in OUT when the run completed")
        p.set_defaults(func=func)

    p = dsub.add_parser("register", help="register a SuperNode's public key (SuperLink with --enable-supernode-auth)")
    p.add_argument("public_key", help="the node's public key (SSH format, NIST EC curve, e.g. ssh-keygen -t ecdsa -b 384)")
    _connection_args(p)
    p.set_defaults(func=cmd_register)

    p = dsub.add_parser("results", help="print the ID/OOD table and failures of a finished run")
    p.add_argument("--out", required=True, help="the run's output folder")
    p.set_defaults(func=cmd_results)
