"""Deployment at the speed of simulation? Deployed ÷ in-process wall time on loopback, measured in one run.

For N nodes (default 2 and 4) it runs, one after the other on this machine:
1. ``fedoa run`` with the README's settings on the first N VADER domains (in-process);
2. the README's loopback deployment: a SuperLink, N SuperNodes (``--vader-domain``), and
   ``fedoa deploy run --nodes N --eval-path embedded:vader`` with the same settings;
and prints the wall times side by side (each command timed from its start to its exit, the
SuperLink and SuperNodes started before the clock of the run), their ratio, the node start-up
(SuperNode command to its worker answering), and the seconds per message exchange from the
server's own record (``results.json`` ``deployment.exchanges``): wall time and the slowest node's
own work in it, so the difference is messaging overhead.

    .venv/bin/python benchmarks/deploy_bench.py                 # README settings, 2 and 4 nodes
    .venv/bin/python benchmarks/deploy_bench.py --tiny --nodes 2   # the tiny test model, seconds

Results: a table on stdout and ``--json`` (default benchmarks/deploy-bench.json). Every process it
starts is stopped by its process group at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("movie", "tweets", "amazon", "nyt")
README_SETS = ["fed.rounds=2", "data.train_per_client=16", "data.test_per_client=16"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fedoa_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedoa.cli", *args]


class Group:
    """Processes in their own process groups, all stopped at the end."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs, self.env, self.procs = logs, env, []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(3)
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def wait_port(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"port {port} did not open")


def settings(n: int, tiny: bool) -> list[str]:
    sets = README_SETS + [f"data.tasks={list(DOMAINS[:n])!r}".replace(" ", "")]
    if tiny:
        from fedoa.testing import tiny_model_dir

        sets += [f"model.name={str(tiny_model_dir())!r}", "data.train_per_client=4", "data.test_per_client=4",
                 "model.max_length=64"]
    return [a for s in sets for a in ("--set", s)]


def in_process(n: int, tiny: bool, work: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(fedoa_cmd("run", "--quiet", "--out", str(work / f"inproc-{n}"), *settings(n, tiny)), env=env,
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def worker_answers(node_config: dict) -> bool:
    from fedoa.runtime.flower.relay import connect, socket_path

    conn = connect(socket_path(node_config))
    if conn is None:
        return False
    conn.close()
    return True


def deployed(n: int, tiny: bool, work: Path, env: dict[str, str]) -> dict:
    home = work / f"flwr-{n}"
    from fedoa.runtime.flower.launch import flower_env

    denv = {**flower_env(home, env), "HF_HUB_OFFLINE": "1"}
    group = Group(work / f"logs-{n}", denv)
    port = free_port()
    try:
        group.start("superlink", fedoa_cmd("deploy", "superlink", "--insecure", "--port", str(port), "--flwr-home",
                                           str(home), "--output-root", str(work)))
        wait_port(port)
        t_nodes = time.perf_counter()
        configs = []
        for i, domain in enumerate(DOMAINS[:n]):
            state = work / f"state-{n}-{domain}"
            group.start(f"node-{domain}", fedoa_cmd(
                "deploy", "supernode", "--insecure", "--superlink", f"127.0.0.1:{port}", "--port", str(free_port()),
                "--client-name", domain, "--vader-domain", domain, "--state-dir", str(state), "--flwr-home", str(home)))
            configs.append({"client-name": domain, "vader-domain": domain, "state-dir": str(state.resolve())})
        while not all(worker_answers(c) for c in configs):
            time.sleep(0.2)
        startup = time.perf_counter() - t_nodes
        t0 = time.perf_counter()
        run = group.start("run", fedoa_cmd(
            "deploy", "run", "--insecure", "--superlink", f"127.0.0.1:{port}", "--flwr-home", str(home),
            "--nodes", str(n), "--eval-path", "embedded:vader", "--out", f"deployed-{n}", "--no-logs",
            *settings(n, tiny)))
        if run.wait(3600) != 0:
            raise RuntimeError(f"the deployed run failed; see {work / f'logs-{n}' / 'run.log'}")
        wall = time.perf_counter() - t0
    finally:
        group.stop()
    results = json.loads((work / f"deployed-{n}" / "results.json").read_text())
    exchanges = results["deployment"]["exchanges"]
    overhead = [e["seconds"] - e["slowest_node_seconds"] for e in exchanges if e["type"] in ("train", "evaluate")]
    return {"wall_seconds": wall, "node_startup_seconds": startup, "exchanges": exchanges,
            "overhead_per_exchange_median": statistics.median(overhead) if overhead else None,
            "overhead_per_exchange_max": max(overhead, default=None)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[2, 4], choices=[1, 2, 3, 4])
    p.add_argument("--tiny", action="store_true", help="the tiny random model and 4 records per client (seconds)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "deploy-bench.json"))
    args = p.parse_args()
    # a SIGTERM (timeout, kill) still stops every process the bench started (the finally blocks)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedoa-deploy-bench-") as tmp:
        for n in args.nodes:
            work = Path(tmp)
            inproc = in_process(n, args.tiny, work, env)
            dep = deployed(n, args.tiny, work, env)
            rows.append({"nodes": n, "in_process_seconds": inproc, **dep, "ratio": dep["wall_seconds"] / inproc})
            print(f"{n} nodes: in-process {inproc:.1f} s, deployed {dep['wall_seconds']:.1f} s "
                  f"(x{dep['wall_seconds'] / inproc:.2f}); node start-up {dep['node_startup_seconds']:.1f} s; "
                  f"messaging overhead per exchange median {dep['overhead_per_exchange_median']:.1f} s", flush=True)
    print("\n| nodes | in-process s | deployed s | deployed ÷ in-process | node start-up s | overhead per exchange s (median / max) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['nodes']} | {r['in_process_seconds']:.1f} | {r['wall_seconds']:.1f} | {r['ratio']:.2f} | "
              f"{r['node_startup_seconds']:.1f} | {r['overhead_per_exchange_median']:.1f} / {r['overhead_per_exchange_max']:.1f} |")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "commit": commit, "tiny": args.tiny,
                                           "cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
