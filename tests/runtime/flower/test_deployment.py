"""Real Flower daemons on loopback: one SuperLink and three SuperNodes as separate processes.

Every process is started in its own process group and stopped by its id in ``finally``;
FLWR_HOME is the test's own folder; ports are free ports picked per test.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from safetensors.torch import load_file

from fedoa.runtime.flower.launch import flower_env
from fedoa.config import config_to_toml
from fedoa.runtime.inprocess import run_simulation
from tests.support.flower import NAMES, Processes, make_federation, wait_for_port

pytestmark = pytest.mark.slow


def start_federation(tmp_path, procs: Processes, paths, home) -> int:
    port = procs.port()
    procs.start("superlink", ["deploy", "superlink", "--insecure", "--port", str(port), "--flwr-home", str(home),
                              "--output-root", str(tmp_path)])
    wait_for_port(port, proc=procs.procs["superlink"])
    for n in NAMES:
        procs.start(f"node-{n}", [
            "deploy", "supernode", "--insecure", "--superlink", f"127.0.0.1:{port}", "--port", str(procs.port()),
            "--client-name", n, "--data-path", str(paths[n]), "--state-dir", str(tmp_path / f"state-{n}"),
            "--flwr-home", str(home),
        ])
    return port


def launch(tmp_path, procs: Processes, cfg, paths, port, home, out, *extra) -> subprocess.Popen:
    (tmp_path / "run.toml").write_text(config_to_toml(cfg))
    return procs.start("run", [
        "deploy", "run", "--config", str(tmp_path / "run.toml"), "--out", out.name, "--nodes", "3",
        "--output-root", str(out.parent),
        "--eval-path", str(paths["shared"]), "--superlink", f"127.0.0.1:{port}", "--insecure",
        "--flwr-home", str(home), "--timeout", "420", *extra,
    ])


def wait(proc: subprocess.Popen, procs: Processes, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("the run did not finish; its log:\n" + procs.log_tail("run") + "\nsuperlink:\n" + procs.log_tail("superlink"))


@pytest.fixture
def env(tmp_path):
    home = tmp_path / "flwr"
    e = flower_env(home)
    e["HF_HUB_OFFLINE"] = "1"
    e["PYTHONUNBUFFERED"] = "1"
    return home, e


def test_three_supernodes_train_the_same_global_adapter_as_the_in_process_run(tmp_path, env):
    home, e = env
    cfg, paths, _ = make_federation(tmp_path)
    sim = run_simulation(cfg, tmp_path / "sim", progress=False).to_json()
    procs = Processes(tmp_path / "logs", e)
    try:
        t0 = time.monotonic()
        port = start_federation(tmp_path, procs, paths, home)
        proc = launch(tmp_path, procs, cfg, paths, port, home, tmp_path / "dep")
        rc = wait(proc, procs, 480)
        print(f"deployment run: {time.monotonic() - t0:.0f} s")
        assert rc == 0, procs.log_tail("run")
    finally:
        procs.stop_all()
    assert "finished:completed" in procs.log_tail("run")
    a = load_file(str(tmp_path / "sim" / "adapters" / "global" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "dep" / "adapters" / "global" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"max abs difference deployed vs in-process global adapter: {diff:.3g}")
    assert diff <= 1e-5
    dep = json.loads((tmp_path / "dep" / "results.json").read_text())
    assert dep["failures"] == []
    assert dep["clients"] == sim["clients"] and dep["test_sets"] == sim["test_sets"]
    for kind in ("personal", "global", "zero_shot"):
        for m in ("id_accuracy", "ood_accuracy"):
            assert dep["summary"][kind][m] == pytest.approx(sim["summary"][kind][m], abs=1e-9)
    assert dep["communication"]["bytes_up_per_round"] == sim["communication"]["bytes_up_per_round"]
    for n in NAMES:  # each personal adapter lives on its own node's disk, and only there
        [run_dir] = (tmp_path / f"state-{n}" / n).iterdir()
        assert (run_dir / "round-0002.safetensors").is_file()
        assert (run_dir / "adapters" / "personal" / "adapter_model.safetensors").is_file()
        assert not any((tmp_path / f"state-{m}").exists() and (tmp_path / f"state-{m}" / n).exists() for m in NAMES if m != n)
    assert not (tmp_path / "dep" / "adapters" / "personal").exists()


def test_a_supernode_killed_in_round_two_is_recorded_and_the_run_finishes(tmp_path, env):
    home, e = env
    cfg, paths, _ = make_federation(tmp_path)
    procs = Processes(tmp_path / "logs", e)
    out = tmp_path / "dep"
    try:
        t0 = time.monotonic()
        port = start_federation(tmp_path, procs, paths, home)
        proc = launch(tmp_path, procs, cfg, paths, port, home, out, "--min-nodes", "2")
        checkpoint = out / ".run" / "checkpoint" / "state.json"
        while not checkpoint.is_file():  # round 1 is aggregated: round 2 is being sent now
            assert proc.poll() is None, procs.log_tail("run")
            assert time.monotonic() - t0 < 300, "round 1 did not finish:\n" + procs.log_tail("run")
            time.sleep(0.2)
        procs.kill("node-b")  # SIGKILL to the SuperNode's whole process group
        killed = time.monotonic()
        rc = wait(proc, procs, 420)
        print(f"deployment run: {time.monotonic() - t0:.0f} s, {time.monotonic() - killed:.0f} s after the kill")
        assert rc == 0, procs.log_tail("run")
    finally:
        procs.stop_all()
    dep = json.loads((out / "results.json").read_text())
    assert dep["communication"]["updates_per_round"] == {"1": ["a", "b", "c"], "2": ["a", "c"]}
    assert dep["clients"] == ["a", "c"]
    assert dep["failures"] and dep["failures"][0].startswith("round 2: client b")
    assert dep["deployment"]["clients_not_evaluated"] == ["b"]
    report = (out / "report.md").read_text()
    assert "## Failures" in report and "client b" in report
    assert (out / "adapters" / "global" / "adapter_model.safetensors").is_file()


def test_the_server_killed_mid_round_resumes_to_the_same_adapters(tmp_path, env):
    """SIGKILL to the ServerApp while round 2's updates are out; `fedoa deploy run` again resumes
    from the checkpoint of round 1, and the nodes from their state of round 1."""
    home, e = env
    cfg, paths, _ = make_federation(tmp_path)
    sim = run_simulation(cfg, tmp_path / "sim", progress=False).to_json()
    procs = Processes(tmp_path / "logs", e)
    out = tmp_path / "dep"
    try:
        port = start_federation(tmp_path, procs, paths, home)
        first = launch(tmp_path, procs, cfg, paths, port, home, out, "--timeout", "120")
        checkpoint = out / ".run" / "checkpoint" / "state.json"
        t0 = time.monotonic()
        while not checkpoint.is_file():  # round 1 is aggregated: round 2 is being sent now
            assert first.poll() is None, procs.log_tail("run")
            assert time.monotonic() - t0 < 300, "round 1 did not finish:\n" + procs.log_tail("run")
            time.sleep(0.2)
        time.sleep(1.0)  # inside round 2
        [server] = procs.serverapp_pids()
        os.kill(server, signal.SIGKILL)
        assert wait(first, procs, 200) != 0  # the first run did not complete
        assert not (out / "results.json").exists()
        again = launch(tmp_path, procs, cfg, paths, port, home, out)
        assert wait(again, procs, 480) == 0, procs.log_tail("run")
    finally:
        procs.stop_all()
    a = load_file(str(tmp_path / "sim" / "adapters" / "global" / "adapter_model.safetensors"))
    b = load_file(str(out / "adapters" / "global" / "adapter_model.safetensors"))
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"max abs difference resumed deployment vs in-process: {diff:.3g}")
    assert diff <= 1e-5
    dep = json.loads((out / "results.json").read_text())
    assert dep["communication"]["updates_per_round"] == {"1": ["a", "b", "c"], "2": ["a", "b", "c"]}
    assert dep["summary"] == sim["summary"]


def test_tls_node_auth_a_bound_client_name_and_a_poisoned_node(tmp_path, env):
    """TLS and node authentication on (certificates and keys made here): every node registered by its
    key; node c sends NaN uploads (the poisoning drill) and is rejected every round; a fourth node,
    registered too, claims client a after round 1 and is refused: the name is bound to a's key."""
    from tests.support.pki import make_node_key, make_tls

    home, e = env
    cfg, paths, _ = make_federation(tmp_path)
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
        for name, (_, public) in keys.items():
            reg = procs.start(f"register-{name}", ["deploy", "register", str(public), *link, *secure])
            assert reg.wait(60) == 0, procs.log_tail(f"register-{name}")

        def node(name: str, client: str):
            procs.start(f"node-{name}", ["deploy", "supernode", *link, *secure, "--port", str(procs.port()),
                                         "--auth-private-key", str(keys[name][0]), "--client-name", client,
                                         "--data-path", str(paths[client]), "--state-dir", str(tmp_path / f"state-{name}")])

        for n in NAMES:
            node(n, n)
        (tmp_path / "run.toml").write_text(config_to_toml(cfg))
        run = procs.start("run", ["deploy", "run", "--config", str(tmp_path / "run.toml"), "--out", "dep",
                                  "--output-root", str(tmp_path), "--nodes", "3", "--eval-path", str(paths["shared"]),
                                  "--node-auth", "--min-nodes", "2", "--set", "attack.kind='nan'",
                                  "--set", "attack.clients=['c']", *link, *secure, "--timeout", "420"])
        checkpoint = out / ".run" / "checkpoint" / "state.json"
        t0 = time.monotonic()
        while not checkpoint.is_file():
            assert run.poll() is None, procs.log_tail("run")
            assert time.monotonic() - t0 < 300, "round 1 did not finish:\n" + procs.log_tail("run")
            time.sleep(0.2)
        node("mallory", "a")  # an impostor with a registered key of its own
        assert wait(run, procs, 480) == 0, procs.log_tail("run")
    finally:
        procs.stop_all()
    dep = json.loads((out / "results.json").read_text())
    assert dep["communication"]["updates_per_round"] == {"1": ["a", "b"], "2": ["a", "b"]}
    rejected = [f for f in dep["failures"] if f.startswith("round") and "client c" in f]
    assert len(rejected) == 2 and all("update rejected" in f and "non-finite" in f for f in rejected)
    [refused] = dep["deployment"]["refused"]
    assert refused["client"] == "a" and refused["bound_to"] == dep["deployment"]["nodes"]["a"]
    audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert [a["accepted"] for a in audit if a["client"] == "c"] == [False, False]
