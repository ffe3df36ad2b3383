"""A node's resident worker behind the thin relay ClientApp: real worker processes, no daemons.

The server logic talks to the deployed app (relay + worker per node) through the in-memory grid;
workers are real processes started by the relay and stopped here by their pids. The two runs
share one federation (its three workers stay resident between runs, as on a real node), in file
order on one xdist worker."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading

import pytest
from safetensors.torch import load_file

from fedoa.runtime.flower.relay import live_workers, private_folder, socket_path, worker_pid
from fedoa.runtime.flower.worker import share_cores
from fedoa.runtime.flower.server_app import serve
from fedoa.runtime.inprocess import run_simulation
from tests.support.flower import FakeGrid, make_federation, run_config, stop_workers


@pytest.fixture(scope="module")
def nodes_on_disk(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    cfg, paths, nodes = make_federation(root)
    yield root, cfg, paths, nodes
    stop_workers(nodes.values())


@pytest.fixture
def federation(nodes_on_disk, output_root, task_identity):
    root, cfg, paths, nodes = nodes_on_disk
    return root, cfg.clone(), paths, nodes


def adapter(folder):
    return load_file(str(folder / "adapters" / "global" / "adapter_model.safetensors"))


def test_the_relay_loads_no_torch():
    code = "import sys, fedoa.runtime.flower.relay; print(sorted(m for m in ('torch', 'peft', 'transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_channel_is_private_to_this_user():
    folder = private_folder()
    assert folder.stat().st_uid == os.getuid() and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert socket_path({"client-name": "a"}) != socket_path({"client-name": "b"})  # one worker per node


def test_workers_on_one_machine_share_its_cores_unless_the_node_says(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # a private folder of this test's own
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = private_folder()
    worker = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)",
                               "fedoa.runtime.flower.worker"], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline() == "up\n"  # running (its /proc cmdline is empty while it starts)
        for name, text in (("a", worker.pid), ("b", dead.pid), ("c", "garbage"), ("d", os.getpid())):
            (folder / f"{name}.pid").write_text(f"{text}\n")
        # a dead worker's file, a half-written one and a live pid that is no worker (reused) do not count
        assert live_workers() == 1
        _shares_cores(folder, worker.pid)
    finally:
        worker.kill()
        worker.wait()


def _shares_cores(folder, worker_pid):
    import torch

    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        assert share_cores({}, {}) == cores == torch.get_num_threads()
        (folder / "e.pid").write_text(f"{worker_pid}\n")  # a second worker (here: the same one, twice)
        assert share_cores({}, {}) == max(1, cores // 2) == torch.get_num_threads()
        assert share_cores({}, {"model.threads": 3}) == 3  # the run's model.threads, when set
        assert share_cores({"threads": 5}, {"model.threads": 3}) == 5 == torch.get_num_threads()  # the node's own
    finally:
        torch.set_num_threads(before)


@pytest.mark.xdist_group("flower-workers")
def test_workers_give_the_in_process_adapters_and_keep_their_model(tmp_path, federation):
    _, cfg, paths, nodes = federation
    logs = {n: socket_path(dict(c)).with_suffix(".log") for n, c in nodes.items()}
    earlier = {n: log.read_text() if log.is_file() else "" for n, log in logs.items()}  # the other test's run
    sim = run_simulation(cfg, tmp_path / "sim", progress=False, reports=False).to_json()
    rc = run_config(cfg, "dep", num_nodes=3, eval_path=str(paths["shared"]))
    dep = serve(FakeGrid(nodes, rc, relay=True), rc, log=lambda m: None).to_json()
    a, b = adapter(tmp_path / "sim"), adapter(tmp_path / "dep")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    assert json.dumps(dep["summary"], sort_keys=True) == json.dumps(sim["summary"], sort_keys=True)
    pids = {n: worker_pid(dict(c)) for n, c in nodes.items()}
    assert all(pids.values()) and len(set(pids.values())) == 3  # one worker per node, started by the relay
    for n in nodes:  # each served every message of the run: one model load (if not resident yet), none per message
        log = logs[n].read_text()[len(earlier[n]):]
        assert log.count(" done in ") == 1 + 2 + 2, log  # query, 2 x train, 2 x evaluate
        assert log.count("(base model loaded)") == (0 if earlier[n] else 1), log
        # once all 3 workers are up (after the query round started them one by one) they share the cores
        threads = {int(line.split(" on ")[1].split()[0]) for line in log.splitlines() if " train for " in line}
        assert threads and max(threads) <= max(1, len(os.sched_getaffinity(0)) // 3), log


@pytest.mark.xdist_group("flower-workers")
def test_a_worker_killed_mid_message_fails_that_client_for_the_round_and_comes_back(tmp_path, federation):
    """Node a's worker is frozen as round 2's training message reaches it and killed a second
    later: the relay reports the failure, the round goes on without a, and round 3's message
    starts a new worker that continues from a's state of round 1 on disk."""
    root, cfg, paths, nodes = federation
    cfg.fed.rounds = 3
    state_a = root / "state-a" / "a"
    earlier = set(state_a.iterdir()) if state_a.is_dir() else set()  # the other test's run
    node_a = next(n for n, c in nodes.items() if c["client-name"] == "a")
    rc = run_config(cfg, "dep", num_nodes=3, eval_path=str(paths["shared"]), min_nodes=2)
    grid = FakeGrid(nodes, rc, relay=True)
    killed = []

    def freeze_then_kill(node, msg):
        if node == node_a and msg.metadata.message_type == "train" and msg.metadata.group_id == "2":
            pid = worker_pid(dict(nodes[node_a]))
            os.kill(pid, signal.SIGSTOP)  # it cannot answer any more: the kill lands mid-message
            threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()
            killed.append(pid)

    grid.before_delivery = freeze_then_kill
    dep = serve(grid, rc, log=lambda m: None).to_json()
    assert killed and worker_pid(dict(nodes[node_a])) not in killed  # a new worker served round 3
    assert dep["communication"]["updates_per_round"] == {"1": ["a", "b", "c"], "2": ["b", "c"], "3": ["a", "b", "c"]}
    [failure] = dep["failures"]
    assert failure.startswith("round 2: client a") and "worker died" in failure
    [run_dir] = set(state_a.iterdir()) - earlier
    info = json.loads((run_dir / "run.json").read_text())
    assert info["last_trained_round"] == 3  # nothing lost: round 3 continued from round 1's state
