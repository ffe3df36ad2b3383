"""Real Flower daemons on loopback: one SuperLink and three SuperNodes as separate processes.

Two tests share one federation (SuperLink + three SuperNodes, each with its resident worker),
each submitting its own run, on one xdist worker: the run that must equal the in-process run, and
the server killed and resumed (int8 uploads at unequal ranks). The TLS test starts a federation of
its own, so that the other worker can run it meanwhile: one run meets a poisoned node, an impostor
and a node lost in round 2. Every process is started in its own process group and stopped by its id when
its federation ends; FLWR_HOME is the federation's own folder; ports are free ports.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fedoa.config import config_to_toml
from fedoa.runtime.flower.launch import flower_env
from fedoa.runtime.inprocess import run_simulation
from tests.support.flower import NAMES, Processes, make_federation, wait_for_port

pytestmark = pytest.mark.slow


def node_env(home: Path) -> dict[str, str]:
    e = flower_env(home)
    e["HF_HUB_OFFLINE"] = "1"
    e["PYTHONUNBUFFERED"] = "1"
    e["OMP_NUM_THREADS"] = "1"  # three nodes and the server share two cores here
    return e


def start_federation(tmp_path, procs: Processes, paths, home) -> int:
    port = procs.port()
    procs.start("superlink", ["deploy", "superlink", "--insecure", "--port", str(port), "--flwr-home", str(home),
                              "--output-root", str(tmp_path)])
    wait_for_port(port, proc=procs.procs["superlink"])
    for n in NAMES:
        state = tmp_path / f"state-{n}"
        procs.node(f"node-{n}", [
            "deploy", "supernode", "--insecure", "--superlink", f"127.0.0.1:{port}", "--port", str(procs.port()),
            "--client-name", n, "--data-path", str(paths[n]), "--state-dir", str(state), "--flwr-home", str(home),
            "--eval-path", str(paths["shared"]),
        ], {"client-name": n, "data-path": str(paths[n]), "state-dir": str(state), "eval-path": str(paths["shared"])})
    return port


@dataclass
class Federation:
    root: Path
    procs: Processes
    cfg: object
    paths: dict
    port: int
    home: Path

    def launch(self, out: str, *extra, cfg=None) -> subprocess.Popen:
        (self.root / f"{out}.toml").write_text(config_to_toml(cfg or self.cfg))
        return self.procs.start(f"run-{out}", [
            "deploy", "run", "--config", str(self.root / f"{out}.toml"), "--out", out, "--nodes", "3",
            "--output-root", str(self.root), "--eval-path", str(self.paths["shared"]),
            "--superlink", f"127.0.0.1:{self.port}", "--insecure", "--flwr-home", str(self.home), "--timeout", "420",
            *extra,
        ])

    def wait(self, proc: subprocess.Popen, out: str, timeout: float) -> int:
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not finish; its log:\n{self.procs.log_tail(f'run-{out}')}\nsuperlink:\n"
                        + self.procs.log_tail("superlink"))

    def until_round_one_is_aggregated(self, proc: subprocess.Popen, out: str) -> None:
        """Round 1's checkpoint exists: round 2 is being sent now."""
        checkpoint, t0 = self.root / out / ".run" / "checkpoint" / "state.json", time.monotonic()
        while not checkpoint.is_file():
            assert proc.poll() is None, self.procs.log_tail(f"run-{out}")
            assert time.monotonic() - t0 < 300, "round 1 did not finish:\n" + self.procs.log_tail(f"run-{out}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("federation")
    home = root / "flwr"
    cfg, paths, _ = make_federation(root)
    cfg.eval.every = 0  # no look after round 1 (one message exchange less): the final evaluation is compared
    procs = Processes(root / "logs", node_env(home))
    try:
        port = start_federation(root, procs, paths, home)
        yield Federation(root, procs, cfg, paths, port, home)
    finally:
        procs.stop_all()


@pytest.mark.xdist_group("flower-federation")
def test_three_supernodes_train_the_same_global_adapter_as_the_in_process_run(federation):
    sim = run_simulation(federation.cfg, federation.root / "sim", progress=False, reports=False).to_json()
    a = load_file(str(federation.root / "sim" / "adapters" / "global" / "adapter_model.safetensors"))
    t0 = time.monotonic()
    rc = federation.wait(federation.launch("dep"), "dep", 480)
    print(f"deployment run: {time.monotonic() - t0:.0f} s")
    assert rc == 0, federation.procs.log_tail("run-dep")
    assert "finished:completed" in federation.procs.log_tail("run-dep")
    b = load_file(str(federation.root / "dep" / "adapters" / "global" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"max abs difference deployed vs in-process global adapter: {diff:.3g}")
    assert diff <= 1e-5
    dep = json.loads((federation.root / "dep" / "results.json").read_text())
    assert dep["failures"] == []
    assert dep["clients"] == sim["clients"] and dep["test_sets"] == sim["test_sets"]
    for kind in ("personal", "global", "zero_shot"):
        for m in ("id_accuracy", "ood_accuracy"):
            assert dep["summary"][kind][m] == pytest.approx(sim["summary"][kind][m], abs=1e-9)
    assert dep["communication"]["bytes_up_per_round"] == sim["communication"]["bytes_up_per_round"]
    for n in NAMES:  # each personal adapter lives on its own node's disk, and only there
        runs = list((federation.root / f"state-{n}" / n).iterdir())
        assert any((r / "round-0002.safetensors").is_file() and (r / "adapters" / "personal" / "adapter_model.safetensors")
                   .is_file() for r in runs)
        assert not any((federation.root / f"state-{m}" / n).exists() for m in NAMES if m != n)
    assert not (federation.root / "dep" / "adapters" / "personal").exists()


@pytest.mark.xdist_group("flower-federation")
def test_the_server_killed_mid_round_resumes_int8_uploads_at_unequal_ranks_to_the_in_process_adapters(federation):
    """fed.upload = int8 and lora.client_ranks {a: 2, b: 1} (lora.r = 4): compressed changes at each
    node's rank, decoded and padded by the server. SIGKILL to the ServerApp while round 2's updates
    are out; the operator stops that run (`fedoa deploy stop`: Flower itself fails a run whose
    ServerApp died only when its heartbeat lapses, a minute later); `fedoa deploy run` again resumes
    from the checkpoint of round 1, and the nodes from their state of round 1 (the int8 residual
    too): the same global adapter, bytes and results as the in-process run."""
    cfg = federation.cfg.clone()
    cfg.fed.upload, cfg.lora.client_ranks = "int8", {"a": 2, "b": 1}
    sim = run_simulation(cfg, federation.root / "sim-int8", progress=False, reports=False).to_json()
    a = load_file(str(federation.root / "sim-int8" / "adapters" / "global" / "adapter_model.safetensors"))
    first = federation.launch("resumed", "--timeout", "120", cfg=cfg)
    federation.until_round_one_is_aggregated(first, "resumed")
    time.sleep(1.0)  # inside round 2
    [server] = federation.procs.serverapp_pids()
    os.kill(server, signal.SIGKILL)
    [run_id] = re.findall(r"started run (\d+)", federation.procs.log_tail("run-resumed", 400))
    stop = federation.procs.start("stop-resumed", ["deploy", "stop", run_id, "--superlink", f"127.0.0.1:{federation.port}",
                                                   "--insecure", "--flwr-home", str(federation.home)])
    assert stop.wait(120) == 0, federation.procs.log_tail("stop-resumed")
    assert federation.wait(first, "resumed", 200) != 0  # the first run did not complete
    out = federation.root / "resumed"
    assert not (out / "results.json").exists()
    rc = federation.wait(federation.launch("resumed", cfg=cfg), "resumed", 480)
    assert rc == 0, federation.procs.log_tail("run-resumed")
    b = load_file(str(out / "adapters" / "global" / "adapter_model.safetensors"))
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"max abs difference resumed deployment vs in-process global adapter (int8, ranks 2/1/4): {diff:.3g}")
    assert diff <= 1e-5
    dep = json.loads((out / "results.json").read_text())
    assert dep["failures"] == []
    assert dep["communication"]["updates_per_round"] == {"1": ["a", "b", "c"], "2": ["a", "b", "c"]}
    for key in ("bytes_up_per_round", "bytes_down_per_round", "bytes_up_per_client_round", "upload_format",
                "client_ranks"):
        assert dep["communication"][key] == sim["communication"][key], key
    assert dep["communication"]["client_ranks"] == {"a": 2, "b": 1, "c": 4}
    assert dep["summary"] == sim["summary"]


def test_tls_node_auth_a_poisoned_node_an_impostor_and_a_lost_node(tmp_path):
    """TLS and node authentication on (certificates and keys made here): every node registered by its
    key; node c sends NaN uploads (the poisoning drill) and is rejected every round; after round 1
    node b is killed (SIGKILL to its process group: it does not come back) and a fourth node,
    registered too, claims client a and is refused: the name is bound to a's key. The run finishes
    on a's updates alone (--min-nodes 1), records b's loss and does not evaluate b."""
    from tests.support.pki import make_node_key, make_tls

    home = tmp_path / "flwr"
    e = node_env(home)
    cfg, paths, _ = make_federation(tmp_path)
    cfg.eval.every = 0  # no look after round 1: the final evaluation is the one this test reads
    tls = make_tls(tmp_path / "pki")
    keys = {n: make_node_key(tmp_path / "keys", n) for n in (*NAMES, "mallory")}
    procs = Processes(tmp_path / "logs", e)
    out = tmp_path / "dep"
    secure = ["--root-certificates", str(tls["ca"]), "--flwr-home", str(home)]
    try:
        port = procs.port()
        procs.start("superlink", ["deploy", "superlink", "--port", str(port), "--ssl-certfile", str(tls["cert"]),
                                  "--ssl-keyfile", str(tls["key"]), "--ssl-ca-certfile", str(tls["ca"]),
                                  "--enable-supernode-auth", "--flwr-home", str(home), "--output-root", str(tmp_path)])
        wait_for_port(port, proc=procs.procs["superlink"])
        link = ["--superlink", f"127.0.0.1:{port}"]
        registering = {name: procs.start(f"register-{name}", ["deploy", "register", str(public), *link, *secure])
                       for name, (_, public) in keys.items()}
        for name, reg in registering.items():
            assert reg.wait(60) == 0, procs.log_tail(f"register-{name}")

        def node(name: str, client: str):
            state = tmp_path / f"state-{name}"
            procs.node(f"node-{name}", ["deploy", "supernode", *link, *secure, "--port", str(procs.port()),
                                        "--auth-private-key", str(keys[name][0]), "--client-name", client,
                                        "--data-path", str(paths[client]), "--state-dir", str(state),
                                        "--eval-path", str(paths["shared"])],
                       {"client-name": client, "data-path": str(paths[client]), "state-dir": str(state),
                        "eval-path": str(paths["shared"])})

        for n in NAMES:
            node(n, n)
        (tmp_path / "run.toml").write_text(config_to_toml(cfg))
        run = procs.start("run", ["deploy", "run", "--config", str(tmp_path / "run.toml"), "--out", "dep",
                                  "--output-root", str(tmp_path), "--nodes", "3", "--eval-path", str(paths["shared"]),
                                  "--node-auth", "--min-nodes", "1", "--set", "attack.kind='nan'",
                                  "--set", "attack.clients=['c']", *link, *secure, "--timeout", "420"])
        checkpoint = out / ".run" / "checkpoint" / "state.json"
        t0 = time.monotonic()
        while not checkpoint.is_file():
            assert run.poll() is None, procs.log_tail("run")
            assert time.monotonic() - t0 < 300, "round 1 did not finish:\n" + procs.log_tail("run")
            time.sleep(0.2)
        # node b lost, and an impostor with a registered key of its own; the server waits (SIGSTOP)
        # until the impostor has joined, so that the next look for new nodes (round 2) meets it
        [server] = procs.serverapp_pids()
        os.kill(server, signal.SIGSTOP)
        try:
            procs.kill("node-b")  # the SuperNode's whole process group; its resident worker too
            node("mallory", "a")
            t1 = time.monotonic()
            while "SuperNode ID" not in procs.log_tail("node-mallory", 200):
                assert time.monotonic() - t1 < 120, procs.log_tail("node-mallory")
                time.sleep(0.2)
        finally:
            os.kill(server, signal.SIGCONT)
        try:
            assert run.wait(480) == 0, procs.log_tail("run")
        except subprocess.TimeoutExpired:
            pytest.fail("the run did not finish; its log:\n" + procs.log_tail("run"))
    finally:
        procs.stop_all()
    dep = json.loads((out / "results.json").read_text())
    assert dep["communication"]["updates_per_round"] == {"1": ["a", "b"], "2": ["a"]}
    rejected = [f for f in dep["failures"] if f.startswith("round") and "client c" in f]
    assert len(rejected) == 2 and all("update rejected" in f and "non-finite" in f for f in rejected)
    [lost] = [f for f in dep["failures"] if "client b" in f and f.startswith("round")]
    assert lost.startswith("round 2: client b")
    assert dep["clients"] == ["a", "c"] and dep["deployment"]["clients_not_evaluated"] == ["b"]
    report = (out / "report.md").read_text()
    assert "## Failures" in report and "client b" in report
    [refused] = dep["deployment"]["refused"]
    assert refused["client"] == "a" and refused["bound_to"] == dep["deployment"]["nodes"]["a"]
    audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert [a["accepted"] for a in audit if a["client"] == "c"] == [False, False]
