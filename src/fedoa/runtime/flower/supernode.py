"""``flower-supernode`` with a shorter idle poll: what ``fedoa deploy supernode`` runs.

Flower 1.42's SuperNode asks the SuperLink for a message and, when there is none, sleeps a fixed 3 s
(``start_client_internal``; no option sets it). A node that has just replied is idle while the
server aggregates, so every message exchange waits up to 3 s for each node's next look, the
slowest of N nodes nearly all of it (4 nodes: 2.4 s on average). Here the node looks every
``FEDOA_NODE_POLL`` seconds (default 0.25; one small call each).

The node's heartbeat: Flower's SuperNode declares a 30 s heartbeat interval, and the SuperLink
calls a node lost after two of them, so a round waited a minute for a node that had died. Here it
declares ``FEDOA_NODE_HEARTBEAT`` seconds (default 10, the least the SuperLink accepts): a lost node
is known after 20 s, for one small call every 4 s.

Everything else is Flower's own command, unchanged; :func:`check_flower` refuses a Flower whose
loop or heartbeat no longer read as expected.
"""
from __future__ import annotations

import inspect
import os
import sys
import time
import types

IDLE_SLEEP = "time.sleep(3)"  # the line of Flower 1.42 this shortens


HEARTBEAT = "HEARTBEAT_DEFAULT_INTERVAL"  # the name both modules below read the interval from


def check_flower(loop: types.ModuleType, *heartbeat_modules: types.ModuleType) -> None:
    if IDLE_SLEEP not in inspect.getsource(loop):
        raise SystemExit(f"fedoa: this Flower's SuperNode loop has no {IDLE_SLEEP!r}; run flower-supernode itself")
    for module in heartbeat_modules:
        if not isinstance(getattr(module, HEARTBEAT, None), (int, float)):
            raise SystemExit(f"fedoa: this Flower's {module.__name__} has no {HEARTBEAT}; run flower-supernode itself")


def shorter_sleeps(poll: float) -> types.SimpleNamespace:
    """The ``time`` module as the SuperNode loop sees it: every sleep at most ``poll`` seconds."""
    shim = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    shim.sleep = lambda seconds: time.sleep(min(seconds, poll))
    return shim


def main() -> int:
    import flwr.supercore.heartbeat as sender
    import flwr.supernode.fleet_http_connection as connection
    import flwr.supernode.start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    check_flower(loop, connection, sender)
    loop.time = shorter_sleeps(float(os.environ.get("FEDOA_NODE_POLL", "0.25")))
    heartbeat = max(10.0, float(os.environ.get("FEDOA_NODE_HEARTBEAT", "10")))  # flwr's HEARTBEAT_MIN_INTERVAL
    setattr(connection, HEARTBEAT, heartbeat)  # what the node declares to the SuperLink
    setattr(sender, HEARTBEAT, heartbeat)  # how often it sends one
    sys.argv[0] = "flower-supernode"
    return flower_supernode() or 0


if __name__ == "__main__":
    sys.exit(main())
