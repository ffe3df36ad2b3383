"""``fedoa deploy ...``: start a SuperLink or a SuperNode, launch a run, follow it, read results.

Argument parsing only; what the verbs start and how lives in :mod:`fedoa.runtime.flower.launch`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from fedoa.cli.common import add_config_args
from fedoa.runtime.flower.launch import (
    CONNECTION,
    DEFAULT_PORT,
    DeployCliError,
    check_control_api,
    default_flwr_home,
    executable,
    flower_env,
    flwr,
    follow,
    run_status,
    submit,
    superlink_command,
    supernode_command,
    write_connection,
)


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
        args.enable_supernode_auth, args.database, args.allow_unauthenticated_control_api,
    )
    os.environ.update(check_control_api(args.host, args.allow_unauthenticated_control_api))
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
    if args.lora_rank is not None:
        values["lora-rank"] = args.lora_rank
    if args.threads is not None:
        values["threads"] = args.threads
    if args.model_path:
        path = Path(args.model_path).expanduser().resolve()
        if not path.is_dir():
            raise DeployCliError("model folder not found", where=str(path))
        values["model-path"] = str(path)
    node_spec(values)  # the node's own checks, before Flower starts
    cmd = supernode_command(args.superlink, args.port, values, args.insecure, args.root_certificates, args.auth_private_key)
    home = _flwr_home(args)
    os.environ.update(flower_env(home))  # the worker sees what the SuperNode and its apps see
    from fedoa.runtime.flower.relay import prestart_worker

    prestart_worker(values, watch_pid=os.getpid())  # this process becomes the SuperNode (exec keeps the pid)
    return _exec(cmd, home)


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
    from fedoa.runtime.flower.launch import is_loopback, split_address

    # off loopback the SuperLink authenticates nodes (always): bind client names to keys by default
    node_auth = args.node_auth or not is_loopback(split_address(args.superlink)[0])
    deploy = DeploySettings(
        out_dir=args.out, num_nodes=args.nodes, eval_path=eval_path, round_timeout=args.round_timeout,
        eval_timeout=args.eval_timeout, join_timeout=args.join_timeout, fresh=args.fresh, replace=args.replace,
        node_auth=node_auth,
        record_outcomes=args.record_outcomes,
    )
    return cfg, deploy


def cmd_app(args) -> int:
    from fedoa.runtime.flower.runconfig import app_dir

    print(app_dir())
    return 0


def cmd_run(args) -> int:
    from fedoa.runtime.flower.runconfig import app_dir, overrides

    home = _flwr_home(args)
    write_connection(home, args.superlink, args.insecure, args.root_certificates)
    cfg, deploy = _run_settings(args)
    run_id = submit(app_dir(), home, overrides(cfg, deploy))
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
    add_config_args(p)
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
    p.add_argument("--replace", action="store_true", help="replace the finished results of a run made with another "
                   "config in OUT (without it such a folder is refused, --fresh or not)")
    p.add_argument("--node-auth", action="store_true", help="the SuperLink authenticates SuperNodes "
                   "(--enable-supernode-auth): bind each client name to its first node's key for the whole run "
                   "(on by default when the SuperLink is not on loopback)")
    p.add_argument("--record-outcomes", action="store_true", help="nodes send each test record's outcome (and "
                   "ROUGE per record) instead of counts only: the opt-in that eval.rouge and paired statistics need; "
                   "named in results.json (deployment.record_outcomes)")


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
                   help="accept only SuperNodes registered with `flwr supernode register` (always on off loopback)")
    p.add_argument("--allow-unauthenticated-control-api", action="store_true",
                   help="off loopback without Flower's account authentication (OIDC, flwr.ee): serve the Control API "
                   "anyway, knowing that whoever reaches the port can submit and stop runs and register node keys "
                   "(firewall it to the sites)")
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
    p.add_argument("--lora-rank", type=int, default=None, help="this client's LoRA rank (1..the run's lora.r; "
                   "default: the run's lora.client_ranks, else lora.r): it receives the global adapter cut to it")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of this node's worker (default: the "
                   "machine's cores shared evenly among the fedoa workers running on it, counted at every message)")
    p.add_argument("--model-path", help="the folder base models may be loaded from: a run's model.name must be a hub "
                   "id, the embedded model, or a file or folder inside it (default: <fedoa cache>)")
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

    p = dsub.add_parser("app", help="print the folder of fedoa's Flower app (for `flwr run` by hand)")
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
