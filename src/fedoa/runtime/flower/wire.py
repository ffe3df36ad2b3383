"""What travels between the ServerApp and the nodes, and how it is encoded.

Every message holds at most two records besides plain values:

- ``ArrayRecord "global"``: the global adapter (LoRA A/B tensors, PEFT keys), server -> node in
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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where tensors are handled (a query needs none)
    from fedoa.model.adapters import AdapterState

GLOBAL_RECORD = "global"
VALUES = "fedoa"
DTYPES = "dtypes"  # inside VALUES: JSON {key: dtype} for tensors sent as float32 (bfloat16)
UPLOAD = "upload"  # inside VALUES: JSON {"format": ..., "scales": {key: float}} of a compressed upload
#: the numpy dtype each compressed format's tensors travel as
UPLOAD_WIRE_DTYPE = {"bfloat16": "int16", "int8": "int8"}

QUERY = "query"
TRAIN = "train"
EVALUATE = "evaluate"


def encode_state(state: AdapterState):
    """An ``ArrayRecord`` of the state, plus the dtypes numpy cannot carry (sent as float32)."""
    import torch
    from flwr.app import ArrayRecord

    tensors, dtypes = {}, {}
    for k, v in state.items():
        t = v.detach().to("cpu").contiguous()
        if t.dtype == torch.bfloat16:  # no numpy dtype; float32 holds every bfloat16 exactly
            dtypes[k] = "bfloat16"
            t = t.to(torch.float32)
        tensors[k] = t
    return ArrayRecord(tensors), dtypes


def decode_state(record, dtypes: dict[str, str] | None = None) -> AdapterState:
    import torch

    dtypes = dtypes or {}
    out: AdapterState = {}
    for k, v in record.to_torch_state_dict().items():
        t = v.clone()  # own the memory (the array record's buffer is read-only numpy)
        if dtypes.get(k) == "bfloat16":
            t = t.to(torch.bfloat16)
        out[k] = t
    return out


def encode_upload(upload):
    """An ``ArrayRecord`` of a compressed change (bfloat16 viewed as int16) and its ``upload`` value."""
    import torch
    from flwr.app import ArrayRecord

    tensors = {k: (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).contiguous()
               for k, t in upload.tensors.items()}
    return ArrayRecord(tensors), json.dumps({"format": upload.format, "scales": upload.scales})


def content(values: dict[str, Any], state: AdapterState | None = None, upload=None):
    """A ``RecordDict`` with the values (JSON-encoded when not a flat scalar) and the state (or a
    compressed upload, :class:`fedoa.model.uploads.Upload`)."""
    from flwr.app import ConfigRecord, RecordDict

    flat: dict[str, Any] = {}
    for k, v in values.items():
        flat[k] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
    records: dict[str, Any] = {}
    if state is not None:
        arrays, dtypes = encode_state(state)
        records[GLOBAL_RECORD] = arrays
        if dtypes:
            flat[DTYPES] = json.dumps(dtypes)
    elif upload is not None:
        records[GLOBAL_RECORD], flat[UPLOAD] = encode_upload(upload)
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
    dtypes = json.loads(values_of(rd).get(DTYPES, "{}"))
    return decode_state(rd.array_records[GLOBAL_RECORD], dtypes)
