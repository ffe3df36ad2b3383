"""A node's resident worker: one long-lived process per SuperNode that keeps the base model loaded.

Flower starts a fresh ClientApp process for every message; importing torch and loading the base
model there again for each message costs seconds (a 7B base: its whole weights, every message).
So the deployed app's ClientApp is a thin relay (:mod:`fedoa.runtime.flower.relay`: Flower and the standard
library only) that hands each message to this worker over a Unix socket and returns its reply.

- The channel: a Unix socket in a folder only this user can open (mode 0700, checked), and the
  worker also refuses a peer of another user id (``SO_PEERCRED``).
- Framing: length-prefixed frames; a JSON header (message type, node config, run config) and the
  message content as Flower's own protobuf ``RecordDict`` bytes. Nothing is pickled.
- Life: the relay starts the worker when none answers (under a lock, so one per node), the worker
  exits when the SuperNode that started its relay is gone. A worker that dies mid-message fails
  that message only (the server records the client's failure for the round, as for any node
  error); the next message starts a new worker. Personal state is on the node's disk after every
  round, so nothing is lost.
- What it keeps: the base model with its LoRA slots (:func:`fedoa.runtime.flower.node.resident_model`);
  everything else (data, the client's state of the round) is read per message, as before.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import threading
import time
import traceback

from fedoa.runtime.flower.relay import live_workers, recv_frame, send_frame

def peer_uid(conn: socket.socket) -> int:
    _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


def serve_one(conn: socket.socket) -> None:
    """One message: the header and the content in, the reply header and content out."""
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    from fedoa.runtime.flower.client_app import handle

    header = json.loads(recv_frame(conn))
    content = recorddict_from_proto(ProtoRecordDict.FromString(recv_frame(conn)))
    start = time.perf_counter()
    threads = share_cores(header["node_config"], header["run_config"])
    print(f"{time.strftime('%H:%M:%S')} {header['type']} for client {header['node_config'].get('client-name')!r} "
          f"on {threads} thread(s)", flush=True)
    try:
        reply = handle(header["type"], header["node_config"], header["run_config"], content)
        body = recorddict_to_proto(reply).SerializeToString()
        status = {"ok": True}
    except Exception as e:  # the node's error goes back to the server as this message's failure
        traceback.print_exc()
        body, status = b"", {"ok": False, "error": f"{type(e).__name__}: {e}"}
    send_frame(conn, json.dumps(status).encode())
    send_frame(conn, body)
    print(f"{time.strftime('%H:%M:%S')} {header['type']} {'done' if status['ok'] else 'failed'} in "
          f"{time.perf_counter() - start:.2f} s{loaded_note()}", flush=True)


def share_cores(node_config: dict, run_config: dict) -> int:
    """Set this worker's torch CPU threads for the next message: the node's ``threads``, else the
    run's ``model.threads`` (applied at model load too), else the machine's cores divided among the
    fedoa workers alive on it. Nodes that share a machine train at
    the same time; each with every core oversubscribes it (4 SuperNodes x 2 threads on 2 cores ran 4.8x
    slower than the same steps one after another; one thread each: as fast, benchmarks/RESULTS.md)."""
    import torch

    chosen = int(node_config.get("threads", 0)) or int(run_config.get("model.threads", 0))
    threads = chosen or max(1, len(os.sched_getaffinity(0)) // max(1, live_workers()))
    torch.set_num_threads(threads)
    return threads


_last_model: int | None = None


def loaded_note() -> str:
    """`` (base model loaded)`` when this message loaded a (new) resident model."""
    global _last_model
    from fedoa.runtime.flower.node import _RESIDENT

    current = id(next(iter(_RESIDENT.values()))) if _RESIDENT else None
    changed, _last_model = current is not None and current != _last_model, current
    return " (base model loaded)" if changed else ""


def watch(pid: int, interval: float = 2.0) -> None:
    """Exit when process ``pid`` (the SuperNode) is gone."""
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass
        time.sleep(interval)


def preload() -> None:
    """Import what every message needs (torch, transformers, PEFT, the methods) once, before the
    first message arrives: a worker started with its SuperNode is ready when the run begins."""
    import peft  # noqa: F401

    import fedoa.runtime.flower.client_app  # noqa: F401
    import fedoa.runtime.flower.node  # noqa: F401
    import fedoa.runtime.session  # noqa: F401
    from fedoa.registry import discover

    discover()


def serve(path: str, watch_pid: int, lock_fd: int | None = None) -> None:
    folder = os.path.dirname(path)
    if os.stat(folder).st_mode & 0o077:
        raise SystemExit(f"fedoa worker: {folder} is open to other users; refusing to serve there")
    if os.path.exists(path):
        os.unlink(path)  # a dead worker's socket: the lock held by the starting relay says none is alive
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        server.bind(path)
    finally:
        os.umask(old)
    server.listen(4)
    with open(path.removesuffix(".sock") + ".pid", "w") as f:  # for operators (and tests) to find it
        f.write(f"{os.getpid()}\n")
    if lock_fd is not None:
        os.close(lock_fd)  # listening: a relay waiting on the spawn lock now finds this worker
    if watch_pid > 0:
        threading.Thread(target=watch, args=(watch_pid,), daemon=True).start()
    preload()

    print(f"fedoa worker {os.getpid()} serving on {path}", flush=True)
    me = os.getuid()
    while True:
        conn, _ = server.accept()
        with conn:
            if peer_uid(conn) != me:
                continue  # another user's process: no answer at all
            try:
                serve_one(conn)
            except (ConnectionError, OSError):
                traceback.print_exc()  # the relay went away (its message failed there): serve the next


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedoa.runtime.flower.worker", description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True, help="the Unix socket to serve on (its folder must be mode 0700)")
    p.add_argument("--watch-pid", type=int, default=0, help="exit when this process (the SuperNode) is gone")
    p.add_argument("--lock-fd", type=int, default=None, help="the spawn lock, held until this worker listens")
    args = p.parse_args(argv)
    serve(args.socket, args.watch_pid, args.lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
