"""The ClientApp: runs on every SuperNode, one process per message (Flower's isolation).

Each handler rebuilds the node's view from the node config and the run config, does its work
through :class:`fedoa.runtime.flower.node.NodeRun` (which calls the method's own
``client_update`` / ``setup_eval``) and replies. Personal state is read from and written to the
node's disk, never sent.
"""
from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedoa.runtime.flower import wire

app = ClientApp()


def _node(context: Context):
    from fedoa.runtime.flower.node import NodeRun

    return NodeRun.from_context(context.node_config, context.run_config)


@app.query()
def query(msg: Message, context: Context) -> Message:
    return Message(wire.content(_node(context).query()), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    values = wire.values_of(msg.content)
    reply, state = _node(context).train(values, wire.state_of(msg.content))
    return Message(wire.content(reply, state), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    values = wire.values_of(msg.content)
    reply = _node(context).evaluate(values, wire.state_of(msg.content))
    return Message(wire.content(reply), reply_to=msg)
