"""fedoa's thin ClientApp: hands each Flower message to the node's resident fedoa worker.

Flower starts a fresh ClientApp process for every message. This one imports only Flower and the
standard library (under a second), never torch: it forwards the message to the node's long-lived
worker (:mod:`fedoa.runtime.flower.worker`), which keeps the base model loaded for the whole run,
and returns the worker's reply. It starts the worker when none answers.
(``tests/runtime/flower/test_worker.py`` checks that importing it loads no torch.)
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

FRAME = struct.Struct(">Q")
MAX_FRAME = 1 << 34  # 16 GiB: a guard against a garbled length, far above any adapter
#: seconds a starting worker may take to answer (imports; the model loads with the first message)
START_TIMEOUT = float(os.environ.get("FEDOA_WORKER_START_TIMEOUT", "300"))

app = ClientApp()


# ---------------------------------------------------------------------------- framing (shared with the worker)


def send_frame(conn: socket.socket, data: bytes) -> None:
    conn.sendall(FRAME.pack(len(data)) + data)


def recv_exact(conn: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = conn.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_frame(conn: socket.socket) -> bytes:
    (n,) = FRAME.unpack(recv_exact(conn, FRAME.size))
    if n > MAX_FRAME:
        raise ConnectionError(f"frame of {n} bytes refused")
    return recv_exact(conn, n)


# ---------------------------------------------------------------------------- finding the worker


def private_folder() -> Path:
    """``<tmp>/fedoa-<uid>``, mode 0700 and owned by this user, or an error (never a shared folder)."""
    folder = Path(tempfile.gettempdir()) / f"fedoa-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    st = folder.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise RuntimeError(f"{folder} is not private to this user (owner {st.st_uid}, mode {oct(st.st_mode & 0o777)})")
    return folder


def socket_path(node_config: dict) -> Path:
    """One worker per SuperNode: named by the node's config and the Python that serves it."""
    key = json.dumps([sorted(node_config.items()), sys.prefix, os.environ.get("FEDOA_CACHE", "")])
    return private_folder() / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.sock"


def worker_pid(node_config: dict) -> int | None:
    """The process id of the node's worker, as it wrote it when it started listening (None: none yet)."""
    try:
        return int(socket_path(node_config).with_suffix(".pid").read_text())
    except (OSError, ValueError):
        return None


def live_workers() -> int:
    """How many of this user's fedoa workers are alive on this machine (their pid files, checked)."""
    alive = 0
    for pid_file in private_folder().glob("*.pid"):
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, 0)
            cmdline = Path(f"/proc/{pid}/cmdline")  # a dead worker's pid may now be another program's
            alive += not cmdline.exists() or b"fedoa.runtime.flower.worker" in cmdline.read_bytes()
        except (OSError, ValueError):
            pass  # a dead worker's file, or one being written
    return alive


def connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        return conn
    except OSError:
        conn.close()
        return None


def spawn_worker(path: Path, watch_pid: int, lock_fd: int | None = None) -> subprocess.Popen:
    """The worker process for the socket ``path``; it exits when ``watch_pid`` is gone. With
    ``lock_fd`` (the held spawn lock) the worker keeps the lock until it listens."""
    log = open(path.with_suffix(".log"), "ab")
    cmd = [sys.executable, "-m", "fedoa.runtime.flower.worker", "--socket", str(path), "--watch-pid", str(watch_pid)]
    if lock_fd is not None:
        cmd += ["--lock-fd", str(lock_fd)]
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True,
                                pass_fds=() if lock_fd is None else (lock_fd,))
    finally:
        log.close()


def prestart_worker(node_config: dict, watch_pid: int) -> None:
    """Start the node's worker now (``fedoa deploy supernode``), so the first message finds the
    model loading already under way. It holds the spawn lock until it listens: a message that
    arrives meanwhile waits for it instead of starting a second one."""
    path = socket_path(node_config)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (conn := connect(path)) is not None:
            conn.close()
            return
        spawn_worker(path, watch_pid, lock.fileno())


def start_worker(path: Path) -> socket.socket:
    """Start the node's worker (one at a time: under a lock) and connect to it."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = connect(path)  # another message (or the SuperNode's start) may have started it meanwhile
        if conn is not None:
            return conn
        # os.getppid(): Flower's long-lived SuperExec of this SuperNode; the worker lives as long as it
        worker = spawn_worker(path, os.getppid())
        deadline = time.monotonic() + START_TIMEOUT
        while (conn := connect(path)) is None:
            if worker.poll() is not None:
                tail = path.with_suffix(".log").read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"the node's fedoa worker exited with code {worker.returncode}: {' | '.join(tail)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node's fedoa worker did not answer within {START_TIMEOUT:g} s")
            time.sleep(0.1)
        return conn


def ask_worker(kind: str, msg: Message, context: Context) -> Message:
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    node_config, run_config = dict(context.node_config), dict(context.run_config)
    path = socket_path(node_config)
    conn = connect(path) or start_worker(path)
    with conn:
        send_frame(conn, json.dumps({"type": kind, "node_config": node_config, "run_config": run_config}).encode())
        send_frame(conn, recorddict_to_proto(msg.content).SerializeToString())
        try:
            status = json.loads(recv_frame(conn))
            body = recv_frame(conn)
        except ConnectionError:
            raise RuntimeError("the node's fedoa worker died while handling this message; the next message "
                               "starts a new one") from None
    if not status.get("ok"):
        raise RuntimeError(status.get("error", "the node's fedoa worker failed"))
    return Message(recorddict_from_proto(ProtoRecordDict.FromString(body)), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    return ask_worker("query", msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return ask_worker("train", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return ask_worker("evaluate", msg, context)
