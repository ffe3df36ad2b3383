"""What travels between the ServerApp and the nodes, and how it is encoded.

Every message holds at most two records besides plain values:

- ``ArrayRecord "global"``: the global adapter (LoRA A/B tensors, PEFT keys, packed into one array
  whose layout, every key and shape in order, is the ``layout`` value), server -> node in
  ``train``/``evaluate`` (cut to the node's rank in ``train``) and node -> server in a ``train``
  reply: the adapter itself (``fed.upload = "float32"``), or its compressed change (bfloat16 as
  its 16 bits in an int16 array, numpy having no bfloat16; int8) with the format and the int8
  scales in the values' ``upload`` entry. Nothing else of a model ever travels: personal adapters
  and data stay on the node.
- ``ConfigRecord "fedoa"``: small values (round numbers, the client name, the evaluation
  assignment and scores, training metrics as JSON text).

Message types: ``query`` (who are you, what data can you evaluate), ``train`` (one client
update), ``evaluate`` (score the assigned models on the assigned test sets).
"""
from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where tensors are handled (a query needs none)
    from fedoa.model.adapters import AdapterState

GLOBAL_RECORD = "global"
PACKED = "packed"  # the one array inside GLOBAL_RECORD
VALUES = "fedoa"
LAYOUT = "layout"  # inside VALUES: JSON [[key, shape], ...]: the packed tensors, in order
DTYPES = "dtypes"  # inside VALUES: JSON {key: dtype} for tensors sent as float32 (bfloat16)
UPLOAD = "upload"  # inside VALUES: JSON {"format": ..., "scales": {key: float}} of a compressed upload
#: the numpy dtype each compressed format's tensors travel as
UPLOAD_WIRE_DTYPE = {"bfloat16": "int16", "int8": "int8"}

QUERY = "query"
TRAIN = "train"
EVALUATE = "evaluate"


def layout_of(tensors: dict[str, Any]) -> list[list[Any]]:
    """The packing order: every tensor's key and shape, keys sorted."""
    return [[k, list(tensors[k].shape)] for k in sorted(tensors)]


def pack(tensors: dict[str, Any]):
    """All tensors (one dtype) as ONE flat array in an ``ArrayRecord``, and their layout.

    Flower sends every array of a record as objects of its own, each with its own calls at every
    hop (ServerApp, SuperLink, SuperNode, ClientApp and back): SmolLM2's adapter alone is 120 arrays.
    One array is a few objects whatever the adapter's size (docs/deployment.md, "Latency")."""
    import torch
    from flwr.app import ArrayRecord

    if len({t.dtype for t in tensors.values()}) > 1:
        raise ValueError(f"tensors of one message travel in one dtype, got {sorted({str(t.dtype) for t in tensors.values()})}")
    layout = layout_of(tensors)
    flat = torch.cat([tensors[k].detach().reshape(-1) for k, _ in layout]) if layout else torch.zeros(0)
    return ArrayRecord({PACKED: flat.to("cpu").contiguous()}), layout


def unpack(flat, layout: list[list[Any]]) -> dict[str, Any]:
    """The tensors of a packed 1-D tensor, by the layout (the caller checked that the sizes add up)."""
    out, at = {}, 0
    for key, shape in layout:
        n = math.prod(shape)
        out[key] = flat[at:at + n].reshape(shape).clone()  # own the memory: the flat buffer may be read-only
        at += n
    return out


def encode_state(state: AdapterState):
    """The state packed (bfloat16 sent as float32, which holds every bfloat16 exactly: numpy has no
    bfloat16), its layout and the keys that were bfloat16."""
    import torch

    dtypes = {k: "bfloat16" for k, v in state.items() if v.dtype == torch.bfloat16}
    record, layout = pack({k: v.detach().to(torch.float32) if k in dtypes else v.detach() for k, v in state.items()})
    return record, layout, dtypes


def decode_state(record, layout: list[list[Any]], dtypes: dict[str, str] | None = None) -> AdapterState:
    import torch

    dtypes = dtypes or {}
    flat = torch.from_numpy(record[PACKED].numpy())
    if flat.dim() != 1 or flat.numel() != sum(math.prod(shape) for _, shape in layout):
        raise ValueError(f"the packed global adapter holds {flat.numel()} numbers, its layout says otherwise")
    return {k: t.to(torch.bfloat16) if dtypes.get(k) == "bfloat16" else t for k, t in unpack(flat, layout).items()}


def encode_upload(upload):
    """A compressed change packed (bfloat16 viewed as int16), its layout and its ``upload`` value."""
    import torch

    record, layout = pack({k: (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).contiguous()
                           for k, t in upload.tensors.items()})
    return record, layout, json.dumps({"format": upload.format, "scales": upload.scales})


def content(values: dict[str, Any], state: AdapterState | None = None, upload=None):
    """A ``RecordDict`` with the values (JSON-encoded when not a flat scalar) and the state (or a
    compressed upload, :class:`fedoa.model.uploads.Upload`), packed."""
    from flwr.app import ConfigRecord, RecordDict

    flat: dict[str, Any] = {}
    for k, v in values.items():
        flat[k] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
    records: dict[str, Any] = {}
    if state is not None:
        records[GLOBAL_RECORD], layout, dtypes = encode_state(state)
        flat[LAYOUT] = json.dumps(layout)
        if dtypes:
            flat[DTYPES] = json.dumps(dtypes)
    elif upload is not None:
        records[GLOBAL_RECORD], layout, flat[UPLOAD] = encode_upload(upload)
        flat[LAYOUT] = json.dumps(layout)
    records[VALUES] = ConfigRecord(flat)
    return RecordDict(records)


def values_of(rd) -> dict[str, Any]:
    """The ``fedoa`` values of a ``RecordDict`` (JSON text stays text: callers decode)."""
    if VALUES not in rd.config_records:
        return {}
    return dict(rd.config_records[VALUES])


def state_of(rd) -> AdapterState | None:
    if GLOBAL_RECORD not in rd.array_records:
        return None
    values = values_of(rd)
    return decode_state(rd.array_records[GLOBAL_RECORD], json.loads(values[LAYOUT]), json.loads(values.get(DTYPES, "{}")))
