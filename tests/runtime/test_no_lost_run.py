"""No lost run: the output folder's lock, checksummed checkpoints with the previous one kept,
publishing that fsyncs before it removes work in progress, torn metrics lines on resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from fedoa.checkpoint import load_checkpoint, save_checkpoint
from fedoa.cli import main
from fedoa.errors import FedoaError
from fedoa.io import FolderLock
from fedoa.runtime.driver import truncate_metrics
from fedoa.runtime.inprocess import run_simulation
from tests.support import vader_tiny_config

HOLD = "import sys, time; from fedoa.io import FolderLock; l = FolderLock(sys.argv[1]); assert l.acquire(); " \
       "print('held', flush=True); time.sleep(120)"


def holder(folder) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_into_a_held_folder_exits_2_naming_the_holder_and_sigkill_frees_it(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    proc = holder(out)
    try:
        from fedoa.testing import tiny_model_dir

        code = main(["run", "--out", str(out), "--set", f"model.name={str(tiny_model_dir())!r}", "--set",
                     "data.train_per_client=4", "--set", "data.test_per_client=4", "--set", "fed.rounds=1",
                     "--set", "fed.personal_start_round=1", "--quiet"])
        errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("fedoa: error:")]
        assert code == 2 and len(errors) == 1
        assert f"another run is writing into this folder (pid {proc.pid} on host " in errors[0]
        assert not (out / ".run").exists()  # nothing of the holder's was touched
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    lock = FolderLock(out)  # the OS released the killed holder's lock; its stale file blocks nothing
    assert lock.acquire()
    lock.release()
    assert not (out / FolderLock.NAME).exists()


# ----------------------------------------------------------------------------- checkpoints

G1 = {"w": torch.ones(3)}
G2 = {"w": torch.full((3,), 2.0)}


def test_the_previous_checkpoint_stays_and_a_damaged_one_falls_back_to_it(tmp_path, capsys):
    ck = tmp_path / ".run" / "checkpoint"
    save_checkpoint(ck, 1, G1, {"a": {"p": {"x": torch.zeros(2)}}}, {"config": {}})
    save_checkpoint(ck, 2, G2, {"a": {"p": {"x": torch.ones(2)}}}, {"config": {}})
    assert (tmp_path / ".run" / "checkpoint.prev" / "state.json").is_file()
    assert load_checkpoint(ck)[0] == 2
    g = ck / "global.safetensors"
    g.write_bytes(g.read_bytes()[:-7])  # truncated, as a crash or a full disk leaves it
    found = load_checkpoint(ck)
    assert found[0] == 1 and torch.equal(found[1]["w"], G1["w"]) and torch.equal(found[2]["a"]["p"]["x"], torch.zeros(2))
    assert "damaged" in capsys.readouterr().err
    assert (tmp_path / ".run" / "checkpoint.damaged").is_dir()  # set aside: the good one stays the previous
    save_checkpoint(ck, 2, G2, {"a": {"p": {"x": torch.ones(2)}}}, {"config": {}})
    assert load_checkpoint(ck)[0] == 2
    assert json.loads((tmp_path / ".run" / "checkpoint.prev" / "state.json").read_text())["round"] == 1
    g = ck / "global.safetensors"
    g.write_bytes(g.read_bytes()[:-7])
    c = tmp_path / ".run" / "checkpoint.prev" / "clients" / "a.safetensors"
    c.write_bytes(c.read_bytes().replace(b"\x00", b"\x01", 1))  # altered, same length
    with pytest.raises(FedoaError) as e:
        load_checkpoint(ck)
    assert "\n" not in str(e.value) and "--fresh" in str(e.value) and e.value.exit_code == 2
    assert "does not match its checksum" in str(e.value)


def test_a_truncated_checkpoint_resumes_from_the_previous_round_to_the_same_adapters(tmp_path, monkeypatch):
    from fedoa.runtime.inprocess import InProcess

    cfg = vader_tiny_config(fed={"rounds": 2}, eval={"every": 0})
    run_simulation(cfg, tmp_path / "whole", progress=False, reports=False)

    def crash(*a, **k):
        raise KeyboardInterrupt  # killed after the last round's checkpoint, before evaluation

    with monkeypatch.context() as m:
        m.setattr(InProcess, "evaluate", crash)
        with pytest.raises(KeyboardInterrupt):
            run_simulation(cfg, tmp_path / "run", progress=False, reports=False)
    ck = tmp_path / "run" / ".run" / "checkpoint"
    assert json.loads((ck / "state.json").read_text())["round"] == 2
    (ck / "global.safetensors").write_bytes((ck / "global.safetensors").read_bytes()[:100])
    metrics = tmp_path / "run" / ".run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"round": 2, "client": "mov')  # a line torn by the kill
    run_simulation(cfg, tmp_path / "run", progress=False, reports=False)  # round 2 again, from round 1's
    a = load_file(str(tmp_path / "whole" / "adapters" / "global" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "run" / "adapters" / "global" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(x["phase"] == "update" for x in lines) == 2 * 3  # no round twice


def test_torn_metrics_lines_are_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 1, "a": 1}\n{"round": 2, "a": 2}\n{"round": 1, "a": 3}\n{"round": 2, "cli')
    truncate_metrics(path, 2)
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"round": 1, "a": 1}, {"round": 1, "a": 3}]


def test_publishing_fsyncs_every_file_and_the_folder_before_removing_work(tmp_path, monkeypatch):
    import fedoa.io as fio
    import fedoa.runtime.driver as drv

    synced, events = set(), []
    real_fsync, real_rmtree = os.fsync, drv.shutil.rmtree

    def fsync(fd):
        synced.add(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def rmtree(path, *a, **k):
        events.append(("rmtree", str(path)))
        real_rmtree(path, *a, **k)

    monkeypatch.setattr(fio.os, "fsync", fsync)
    monkeypatch.setattr(drv.shutil, "rmtree", rmtree)
    out = tmp_path / "run"
    cfg = vader_tiny_config(fed={"rounds": 1, "personal_start_round": 1}, tracking={"tensorboard": True})
    run_simulation(cfg, out, progress=False, reports=False)  # the event files are published files too
    assert events and events[-1] == ("rmtree", str(out / ".run"))
    published = [p for p in out.rglob("*") if p.is_file()]
    assert published and all(str(p.resolve()).replace(str(out.resolve()), str((out / ".run" / "final").resolve()), 1)
                             in synced for p in published)
    assert str(out.resolve()) in synced  # the folder itself, after the moves


# ----------------------------------------------------------------------------- one run per folder, in turn too


def _run_cli(out, *extra) -> int:
    from fedoa.testing import tiny_model_dir

    return main(["run", "--out", str(out), "--set", f"model.name={str(tiny_model_dir())!r}", "--set",
                 "data.train_per_client=4", "--set", "data.test_per_client=4", "--set", "fed.rounds=1",
                 "--set", "fed.personal_start_round=1", "--set", "eval.zero_shot=false", "--quiet", *extra])


def test_a_later_run_with_another_config_cannot_replace_a_finished_runs_results_unless_asked(tmp_path, capsys):
    out = tmp_path / "out"
    assert _run_cli(out) == 0
    first = (out / "results.json").read_bytes()
    capsys.readouterr()
    for extra in ([], ["--fresh"]):  # --fresh ignores an unfinished checkpoint, never another run's results
        assert _run_cli(out, "--set", "train.lr=0.01", *extra) == 2
        errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("fedoa: error:")]
        assert len(errors) == 1 and "holds the finished results of another run (other values of train.lr)" in errors[0]
        assert (out / "results.json").read_bytes() == first and not (out / ".run").exists()
    assert _run_cli(out) == 0  # the same config again (`make run` twice): reruns into its own folder
    assert _run_cli(out, "--set", "train.lr=0.01", "--replace") == 0  # asked for: replaced
    assert json.loads((out / "results.json").read_text())["config"]["train"]["lr"] == 0.01
