"""Test harness for the Flower app: client data on disk, an in-memory grid, real processes.

- :func:`write_federation`: synthetic clients as per-node jsonl folders, the union folder the
  in-process runtime reads, and the shared test folder (``eval-path``).
- :class:`FakeGrid`: a ``flwr.serverapp.Grid`` stand-in that hands each message to the real
  ClientApp in this process (no SuperLink, no Ray): fast tests of the server/node logic.
- :class:`Processes`: starts Flower daemons in their own process groups and always stops them
  by process group id (SIGTERM, then SIGKILL).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from fedoa.data.records import ClientData
from tests.support import synthetic_clients, tiny_config

# ---------------------------------------------------------------------------- data


def _write_jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"instruction": r.instruction, "output": r.output}) + "\n" for r in records))


def write_federation(root: Path, clients: list[ClientData], categories: dict[str, str] | None = None) -> dict[str, Path]:
    """``root/nodes/<name>/``, ``root/all/`` (in-process) and ``root/shared/`` (eval-path)."""
    for c in clients:
        category = (categories or {}).get(c.name, "sentiment")
        for folder in (root / "nodes" / c.name, root / "all"):
            _write_jsonl(folder / category / f"{c.name}_train.jsonl", c.train)
            _write_jsonl(folder / category / f"{c.name}_test.jsonl", c.test)
        _write_jsonl(root / "shared" / category / f"{c.name}_test.jsonl", c.test)
    return {"all": root / "all", "shared": root / "shared", **{c.name: root / "nodes" / c.name for c in clients}}


NAMES = ("a", "b", "c")


def run_config(cfg, out: str, **deploy) -> dict:
    """The Flower run config of a run (``deploy``: DeploySettings fields; ``min_nodes``: fed.min_clients)."""
    from fedoa.runtime.flower.runconfig import DeploySettings, flatten

    cfg = cfg.clone()
    if "min_nodes" in deploy:
        cfg.fed.min_clients = deploy.pop("min_nodes")
    deploy.setdefault("poll_interval", 0.0)
    return flatten(cfg, DeploySettings(out_dir=out, **deploy))


def make_federation(tmp_path: Path, categories: dict[str, str] | None = None, **cfg_sections):
    """Three synthetic clients on disk, the in-process config over their union, node configs."""
    paths = write_federation(tmp_path / "data", synthetic_clients(NAMES, n_train=8, n_test=6), categories)
    cfg = tiny_config(**cfg_sections)
    cfg.data.source = "jsonl"
    cfg.data.path = str(paths["all"])
    nodes = {
        100 + i: {"client-name": n, "data-path": str(paths[n]), "state-dir": str(tmp_path / f"state-{n}"),
                  "eval-path": str(paths["shared"])}
        for i, n in enumerate(NAMES)
    }
    return cfg, paths, nodes


# ---------------------------------------------------------------------------- in-memory grid


class FakeGrid:
    """Delivers each pushed message to the ClientApp of its node, synchronously, on pull.

    ``dead`` nodes answer like Flower does for a vanished SuperNode (error code 5);
    ``silent`` nodes never answer (a round timeout has to end the wait). With ``relay`` the nodes
    run the deployed app: the thin relay and a real worker process per node (stop them with
    :func:`stop_workers`).
    """

    def __init__(self, node_configs: dict[int, dict], run_config: dict, relay: bool = False):
        self.node_configs = node_configs
        self.run_config = run_config
        self.relay = relay
        self.before_delivery = None  # callable(node, message) just before its ClientApp runs
        self.pending = {}
        self.dead: set[int] = set()
        self.silent: set[int] = set()
        self.sent: list[tuple[int, str]] = []
        self.on_push = None  # callable(message) before it is queued (tests kill nodes here)

    def get_node_ids(self):
        return list(self.node_configs)

    def push_messages(self, messages):
        ids = []
        for m in messages:
            if self.on_push:
                self.on_push(m)
            mid = uuid.uuid4().hex
            m.metadata.__dict__["_message_id"] = mid
            self.pending[mid] = m
            self.sent.append((m.metadata.dst_node_id, m.metadata.message_type))
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids):
        from flwr.app import Context, Error, Message, RecordDict

        if self.relay:  # the deployed app: a thin relay to each node's resident worker process
            from fedoa.runtime.flower.relay import app
        else:
            from fedoa.runtime.flower.client_app import app

        out = []
        for mid in list(message_ids):
            m = self.pending.get(mid)
            if m is None:
                continue
            node = m.metadata.dst_node_id
            if node in self.silent:
                continue
            del self.pending[mid]
            if node in self.dead:
                out.append(Message(Error(code=5, reason="Error: Node Unavailable"), reply_to=m))
                continue
            ctx = Context(1, node, dict(self.node_configs[node]), RecordDict(), dict(self.run_config))
            if self.before_delivery is not None:
                self.before_delivery(node, m)
            try:
                out.append(app(m, ctx))
            except Exception as e:  # what the SuperNode does with a ClientApp exception
                out.append(Message(Error(code=2, reason=f"{type(e)}:<'{e}'>"), reply_to=m))
        return out


def stop_workers(node_configs) -> list[int]:
    """SIGKILL the resident workers of these nodes (by the pid each wrote); the pids it stopped."""
    from fedoa.runtime.flower.relay import worker_pid

    stopped = []
    for config in node_configs:
        pid = worker_pid(dict(config))
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
                stopped.append(pid)
            except ProcessLookupError:
                pass
    return stopped


# ---------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Processes:
    """Daemons started by a test; each in its own session (process group), stopped by pgid."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs, self.env = logs, env
        self.node_configs: list[dict] = []
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: set[int] = set()  # every port handed to a daemon: how its helpers are found
        logs.mkdir(parents=True, exist_ok=True)

    def port(self) -> int:
        p = free_port()
        self.ports.add(p)
        return p

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedoa.cli", *args], stdout=log, stderr=subprocess.STDOUT,
            env=self.env, start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the daemon and the app processes it started)."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(30)

    def node(self, name: str, args: list[str], node_config: dict) -> subprocess.Popen:
        """Start ``fedoa deploy supernode ...`` whose node config is ``node_config`` (its resident
        worker, also one a relay restarts outside the node's process group, is stopped by its pid)."""
        self.node_configs.append(node_config)
        return self.start(name, args)

    def stop_all(self) -> None:
        stop_workers(self.node_configs)
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group may outlive its leader
            except ProcessLookupError:
                pass
            if proc.poll() is None:
                proc.wait(15)
        self._reap_helpers()

    def serverapp_pids(self) -> list[int]:
        """The ServerApp process(es) the SuperLink started for this test's runs."""
        return [pid for pid in self._helpers() if b"flwr-serverapp" in Path(f"/proc/{pid}/cmdline").read_bytes()]

    def _helpers(self) -> list[int]:
        """Processes Flower started in sessions of their own (SuperExec, ServerApp, ClientApp):
        they name one of this test's ports on their command line."""
        marks = [f"127.0.0.1:{p}".encode() for p in self.ports]
        out = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if any(m in cmd for m in marks):
                out.append(int(d.name))
        return out

    def _reap_helpers(self, grace: float = 20.0) -> None:
        """They exit on their own when their parent is gone; wait, then kill each by its pid."""
        deadline = time.monotonic() + grace
        while (left := self._helpers()) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert not left, f"Flower helper processes outlived their daemons (killed): {left}"

    def log_tail(self, name: str, n: int = 40) -> str:
        lines = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])
