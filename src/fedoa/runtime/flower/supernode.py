"""``flower-supernode`` with a shorter idle poll: what ``fedoa deploy supernode`` runs.

Flower 1.42's SuperNode asks the SuperLink for a message and, when there is none, sleeps a fixed 3 s
(``start_client_internal``; no option sets it). A node that has just replied is idle while the
server aggregates, so every message exchange waits up to 3 s for each node's next look, the
slowest of N nodes nearly all of it (4 nodes: 2.4 s on average). Here the node looks every
``FEDOA_NODE_POLL`` seconds (default 0.25; one small gRPC call each). Everything else is Flower's own
command, unchanged; :func:`check_flower` refuses a Flower whose loop no longer reads as expected.
"""
from __future__ import annotations

import inspect
import os
import sys
import time
import types

IDLE_SLEEP = "time.sleep(3)"  # the line of Flower 1.42 this shortens


def check_flower(module: types.ModuleType) -> None:
    if IDLE_SLEEP not in inspect.getsource(module):
        raise SystemExit(f"fedoa: this Flower's SuperNode loop has no {IDLE_SLEEP!r}; run flower-supernode itself")


def shorter_sleeps(poll: float) -> types.SimpleNamespace:
    """The ``time`` module as the SuperNode loop sees it: every sleep at most ``poll`` seconds."""
    shim = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    shim.sleep = lambda seconds: time.sleep(min(seconds, poll))
    return shim


def main() -> int:
    import flwr.supernode.start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    check_flower(loop)
    loop.time = shorter_sleeps(float(os.environ.get("FEDOA_NODE_POLL", "0.25")))
    sys.argv[0] = "flower-supernode"
    return flower_supernode() or 0


if __name__ == "__main__":
    sys.exit(main())
