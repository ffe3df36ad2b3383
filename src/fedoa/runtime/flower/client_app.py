"""The node's message handlers, and the ClientApp that runs them in-process.

:func:`handle` does one message's work through :class:`fedoa.runtime.flower.node.NodeRun`
(which calls the method's own ``client_update`` / ``setup_eval``): it is what a node's resident
worker (:mod:`fedoa.runtime.flower.worker`) runs for every message the thin ClientApp of the
deployed app (:mod:`fedoa.runtime.flower.relay`) hands it. The ``app`` here runs the same handlers in the
ClientApp process itself (in-memory grids in tests; Flower users who want no worker).
Personal state is read from and written to the node's disk, never sent.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedoa.runtime.flower import wire

app = ClientApp()


def handle(kind: str, node_config: Mapping[str, Any], run_config: Mapping[str, Any], content):
    """The reply content (a ``RecordDict``) to a ``query``, ``train`` or ``evaluate`` message."""
    from fedoa.runtime.flower.node import NodeRun

    node = NodeRun.from_context(node_config, run_config)
    if kind == wire.QUERY:
        return wire.content(node.query())
    values = wire.values_of(content)
    if kind == wire.TRAIN:
        reply, update = node.train(values, wire.state_of(content))
        return wire.content(reply, update.state, update.upload)
    if kind == wire.EVALUATE:
        return wire.content(node.evaluate(values, wire.state_of(content)))
    raise ValueError(f"unknown message type {kind!r}")


def _reply(kind: str, msg: Message, context: Context) -> Message:
    return Message(handle(kind, context.node_config, context.run_config, msg.content), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    return _reply(wire.QUERY, msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _reply(wire.TRAIN, msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _reply(wire.EVALUATE, msg, context)
