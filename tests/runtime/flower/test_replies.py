"""One guarded parser for every reply a node sends (runtime/flower/replies.py): thousands of
malformed replies, each a BadReply and never an exception; tensors checked from their metadata
before anything is decoded; on the server, a hostile reply is that client's failure for the round."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedoa.algorithms.base import ClientUpdate
from fedoa.runtime.flower import replies, wire
from fedoa.runtime.flower.replies import BadReply, parse

REF = {"m.lora_A.weight": torch.zeros(2, 3), "m.lora_B.weight": torch.zeros(3, 2, dtype=torch.bfloat16)}
PHASES = [{"phase": "global", "steps": 2, "examples": 8, "seconds": 0.5, "metrics": {"loss": 1.25}, "reused": False}]
PAIRS = [("global", "a"), ("personal", "b")]
SIZES = {"a": 4, "b": 3}


def train_values(**over):
    return {"client": "a", "round": 2, "num-examples": 8, "phases": PHASES, "seconds": 1.0, **over}


def train_reply(state=None, layout=None, **over):
    """A train reply; ``layout``: replaces the layout its tensors were packed by."""
    content = wire.content(train_values(**over), {k: v + 1 for k, v in REF.items()} if state is None else state)
    if layout is not None:
        content.config_records[wire.VALUES] = ConfigRecord({**wire.values_of(content), wire.LAYOUT: layout})
    return content


def eval_reply(rows=None, **over):
    rows = rows if rows is not None else [
        {"kind": "global", "set": "a", "options": 0.5, "generation": None,
         "counts": {"scored": 4, "options_right": 2, "generation_right": 0}},
        {"kind": "personal", "set": "b", "options": 1.0, "generation": None,
         "counts": {"scored": 3, "options_right": 3, "generation_right": 0}}]
    return wire.content({"client": "a", "scores": rows, "seconds": 0.1, **over})


def hello(**over):
    return wire.content({"client": "a", "train": 8, "train-pairs": [["t", "c"]], "test": {"size": 4, "pairs": [["t", "c"]]},
                         "sets": {"b": {"size": 3, "pairs": [["u", "c"]]}}, "rank": 2, **over})


def p_train(content):
    return parse(wire.TRAIN, content, client="a", round=2, reference=REF)


def p_eval(content, records=False):
    return parse(wire.EVALUATE, content, client="a", pairs=PAIRS, sizes=SIZES, records=records)


def test_well_formed_replies_parse():
    u = p_train(train_reply())
    assert isinstance(u, ClientUpdate) and u.num_examples == 8 and u.phases[0].metrics == {"loss": 1.25}
    assert u.state["m.lora_B.weight"].dtype == torch.bfloat16 and torch.equal(u.state["m.lora_A.weight"], REF["m.lora_A.weight"] + 1)
    assert p_train(wire.content(train_values())).state is None  # a method without a global adapter (Local)
    assert [(r.kind, r.set, r.options) for r in p_eval(eval_reply())] == [("global", "a", 0.5), ("personal", "b", 1.0)]
    assert parse(wire.QUERY, hello()).client == "a"


@pytest.mark.parametrize("content, reason", [
    (train_reply(**{"num-examples": math.inf}), "num-examples"),  # OverflowError before
    (train_reply(**{"num-examples": 0}), "num-examples"),
    (train_reply(**{"num-examples": True}), "num-examples"),
    (train_reply(client="b"), "came from client 'b'"),
    (train_reply(round=1), "answers round 1"),
    (train_reply(phases="[{]"), "phases is not JSON"),
    (train_reply(phases=[{**PHASES[0], "seconds": "NaN"}]), "finite"),
    (train_reply(phases=json.dumps([{**PHASES[0], "metrics": {"loss": float("nan")}}])), "non-finite"),
    (train_reply(phases=[{**PHASES[0], "metrics": {"round": 1.0, "client": 2.0, "x y": 1.0}}]), "not a name"),
    (wire.content(train_values(), {"m.lora_A.weight": torch.zeros(2, 3)}), "tensor names"),
    (wire.content(train_values(), {**REF, "evil": torch.zeros(1)}), "unexpected ['evil']"),
    (wire.content(train_values(), {"m.lora_A.weight": torch.zeros(3, 3), "m.lora_B.weight": REF["m.lora_B.weight"]}), "shape"),
    (RecordDict({wire.GLOBAL_RECORD: ArrayRecord({wire.PACKED: torch.zeros(12, dtype=torch.float64)}),
                 wire.VALUES: wire.content(train_values(), REF).config_records[wire.VALUES]}), "dtype float64"),
    (train_reply(state=REF, layout=json.dumps(wire.layout_of(REF)[::-1])), "not in key order"),
    (train_reply(state=REF, layout="[[1, 2]]"), "layout must be"),
    (wire.content(train_values(), {"m.lora_A.weight": torch.zeros(2, 3), "m.lora_B.weight": torch.zeros(3, 2)}), "dtypes"),
    (eval_reply(rows=[{"kind": "global", "set": "b", "options": 0.5, "generation": None}]), "not asked to score"),
    (eval_reply(rows=[{"kind": "global", "set": "a", "options": 1.5, "generation": None},
                      {"kind": "personal", "set": "b", "options": 1.0, "generation": None}]), "[0, 1]"),
    (eval_reply(rows=[{"kind": "global", "set": "a", "options": 0.5, "generation": None, "options_hits": "1010"},
                      {"kind": "personal", "set": "b", "options": 1.0, "generation": None}]), "not asked for"),
    (eval_reply(rows=[{"kind": "global", "set": "a", "options": 0.5, "generation": None}]), "missing"),
    (eval_reply(rows=[{"kind": "global", "set": "a", "options": 0.5, "generation": None,
                       "counts": {"scored": 4, "options_right": 9}},
                      {"kind": "personal", "set": "b", "options": 1.0, "generation": None}]), "counts.options_right"),
    (hello(client="../etc"), "not a name"),
    (hello(train=-1), "train"),
    (hello(sets="{\"b\": {\"size\": Infinity, \"pairs\": []}}"), "non-finite"),
    (hello(test={"size": 4}), "exactly size and pairs"),
])
def test_each_malformed_field_is_a_bad_reply_naming_it(content, reason):
    kind = wire.TRAIN if "phases" in wire.values_of(content) else wire.EVALUATE if "scores" in wire.values_of(content) else wire.QUERY
    got = p_train(content) if kind == wire.TRAIN else p_eval(content) if kind == wire.EVALUATE else parse(kind, content)
    assert isinstance(got, BadReply) and reason in str(got), got


def raw_array(dtype="float32", shape=(2, 3), data=None, stype="numpy.ndarray"):
    if data is None:
        buf = io.BytesIO()
        np.save(buf, np.zeros(shape, dtype=dtype), allow_pickle=False)
        data = buf.getvalue()
    return Array(dtype=dtype, shape=tuple(shape), stype=stype, data=data)


TOTAL = sum(v.numel() for v in REF.values())  # numbers in the packed array


def with_arrays(arrays: dict, values=None):
    return RecordDict({wire.GLOBAL_RECORD: ArrayRecord(arrays),
                       wire.VALUES: ConfigRecord(values or {**train_values(phases=json.dumps(PHASES)),
                                                           wire.LAYOUT: json.dumps(wire.layout_of(REF)),
                                                           wire.DTYPES: json.dumps({"m.lora_B.weight": "bfloat16"})})})


def test_tensors_are_checked_from_metadata_before_anything_is_decoded(monkeypatch):
    decoded = []
    monkeypatch.setattr(np, "load", lambda *a, **k: decoded.append(1) or pytest.fail("decoded"))
    cases = {
        "oversized": {wire.PACKED: raw_array(shape=(TOTAL,), data=b"\x93NUMPY" + b"\0" * (1 << 22))},
        "lying shape": {wire.PACKED: raw_array(shape=(TOTAL,), dtype="float32", data=b"x" * 10)},
        "pickle stype": {wire.PACKED: raw_array(shape=(TOTAL,), stype="pickle")},
        "object dtype": {wire.PACKED: raw_array(shape=(TOTAL,), dtype="object", data=b"x" * 30)},
        "wrong size": {wire.PACKED: raw_array(shape=(TOTAL + 1,))},
        "extra": {wire.PACKED: raw_array(shape=(TOTAL,)), "x": raw_array()},
        "per tensor": {k: raw_array(shape=tuple(v.shape)) for k, v in REF.items()},
    }
    for name, arrays in cases.items():
        assert isinstance(p_train(with_arrays(arrays)), BadReply), name
    assert decoded == []


def test_data_that_contradict_their_metadata_are_refused_after_decoding():
    buf = io.BytesIO()
    np.save(buf, np.zeros((3, 4), dtype="float32"), allow_pickle=False)  # 12 values, the metadata says (12,)
    got = p_train(with_arrays({wire.PACKED: raw_array(shape=(TOTAL,), data=buf.getvalue())}))
    assert isinstance(got, BadReply) and "do not match its metadata" in str(got)


# ----------------------------------------------------------------------------- fuzz

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# what a Flower ConfigRecord can carry (any of it may arrive in any field)
flat = st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() | st.text(max_size=30) | st.binary(max_size=20) | \
    st.lists(st.integers(-2**63, 2**63 - 1), max_size=3) | st.lists(st.floats(), max_size=3) | \
    st.lists(st.text(max_size=5), max_size=3) | junk.map(lambda x: json.dumps(x, allow_nan=True))


@st.composite
def arrays(draw):
    out = {}
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([wire.PACKED, wire.PACKED, "m.lora_A.weight", "x", ""]))
        dtype = draw(st.sampled_from(["float32", "float16", "float64", "int64", "object", "<U3", "bfloat16", "zz"]))
        shape = draw(st.lists(st.integers(0, 4), max_size=3) | st.just([TOTAL]))
        data = draw(st.binary(max_size=200) | st.just(None))
        try:
            out[key] = raw_array(dtype, tuple(shape), data, draw(st.sampled_from(["numpy.ndarray", "pickle", ""])))
        except Exception:  # noqa: BLE001 - numpy refuses to make some of these itself
            out[key] = Array(dtype=dtype, shape=tuple(shape), stype="numpy.ndarray", data=data or b"x")
    return out


@st.composite
def hostile(draw):
    base_kind = draw(st.sampled_from([wire.TRAIN, wire.EVALUATE, wire.QUERY]))
    base = {wire.TRAIN: wire.values_of(train_reply()),
            wire.EVALUATE: wire.values_of(eval_reply()),
            wire.QUERY: wire.values_of(hello())}[base_kind]
    values = dict(base)
    for key in draw(st.lists(st.sampled_from(sorted(base) + [wire.DTYPES, wire.LAYOUT, "zz"]), max_size=4)):
        if draw(st.booleans()):
            values.pop(key, None)
        else:
            values[key] = draw(flat)
    records = {}
    if draw(st.integers(0, 4)):
        records[wire.VALUES] = ConfigRecord(values)
    if draw(st.booleans()):
        records[wire.GLOBAL_RECORD] = ArrayRecord(draw(arrays()))
    if draw(st.integers(0, 9)) == 0:
        records["other"] = MetricRecord({"x": 1.0})
    return base_kind, RecordDict(records)


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile())
def test_thousands_of_malformed_replies_never_raise(case):
    kind, content = case
    got = parse(kind, content, client="a", round=2, reference=REF, pairs=PAIRS, sizes=SIZES)
    assert isinstance(got, (BadReply, ClientUpdate, replies.Report, list))
    assert not getattr(got, "unforeseen", False), got  # every problem met by an explicit check
    if isinstance(got, ClientUpdate) and got.state is not None:
        assert {k: (v.shape, v.dtype) for k, v in got.state.items()} == {k: (v.shape, v.dtype) for k, v in REF.items()}
    assert isinstance(replies.seconds_of(content), float)


# ----------------------------------------------------------------------------- compressed uploads

from fedoa.model.uploads import Upload, decode_upload, encode_change  # noqa: E402

REF32 = {"m.lora_A.weight": torch.zeros(2, 3), "m.lora_B.weight": torch.zeros(3, 2)}


def upload_reply(fmt="int8", **over):
    up, _ = encode_change({k: v + 0.5 for k, v in REF32.items()}, REF32, None, fmt)
    return wire.content(train_values(**over), upload=up)


def p_upload(content, fmt="int8"):
    return parse(wire.TRAIN, content, client="a", round=2, reference=REF32, upload=fmt)


@pytest.mark.parametrize("fmt", ["int8", "bfloat16"])
def test_a_compressed_upload_travels_in_its_own_dtype_and_parses(fmt):
    content = upload_reply(fmt)
    assert {a.dtype for a in content.array_records[wire.GLOBAL_RECORD].values()} == {wire.UPLOAD_WIRE_DTYPE[fmt]}
    u = p_upload(content, fmt)
    assert isinstance(u, ClientUpdate) and u.state is None and u.upload.format == fmt
    assert all(torch.allclose(t, REF32[k] + 0.5, atol=1e-2) for k, t in decode_upload(u.upload, REF32).items())


def _with_upload_values(content, **upload):
    values = wire.values_of(content)
    meta = {**json.loads(values[wire.UPLOAD]), **upload}
    return RecordDict({wire.GLOBAL_RECORD: content.array_records[wire.GLOBAL_RECORD],
                       wire.VALUES: ConfigRecord({**values, wire.UPLOAD: json.dumps(meta)})})


@pytest.mark.parametrize("content, fmt, reason", [
    (upload_reply("int8"), "bfloat16", "format 'int8'"),
    (upload_reply("bfloat16"), "int8", "format 'bfloat16'"),
    (train_reply(state={k: v + 1 for k, v in REF32.items()}), "int8", "upload must be text"),
    (_with_upload_values(upload_reply(), scales={"m.lora_A.weight": 0.1}), "int8", "scales do not name"),
    (_with_upload_values(upload_reply(), scales={"m.lora_A.weight": -1.0, "m.lora_B.weight": 0.1}), "int8", "scales"),
    (_with_upload_values(upload_reply(), scales="NaN"), "int8", "upload.scales"),
    (wire.content(train_values(), upload=Upload(
        "int8", {"m.lora_A.weight": torch.zeros(3, 3, dtype=torch.int8),
                 "m.lora_B.weight": torch.zeros(3, 2, dtype=torch.int8)}, {"m.lora_A.weight": 0.1, "m.lora_B.weight": 0.1})),
     "int8", "shape"),
    (wire.content(train_values(), upload=Upload(
        "int8", {"m.lora_A.weight": torch.zeros(2, 3, dtype=torch.int16),
                 "m.lora_B.weight": torch.zeros(3, 2, dtype=torch.int16)}, {"m.lora_A.weight": 0.1, "m.lora_B.weight": 0.1})),
     "int8", "dtype int16"),
])
def test_a_malformed_compressed_upload_is_a_bad_reply(content, fmt, reason):
    got = p_upload(content, fmt)
    assert isinstance(got, BadReply) and reason in str(got) and not got.unforeseen, got


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_malformed_int8_uploads_never_raise(data):
    base = wire.values_of(upload_reply())
    values = dict(base)
    for key in data.draw(st.lists(st.sampled_from(sorted(base)), max_size=3)):
        values[key] = data.draw(flat)
    arrays = {wire.PACKED: raw_array(dtype="int8", shape=(12,))}
    if data.draw(st.booleans()):
        keys = data.draw(st.lists(st.sampled_from([wire.PACKED, *REF32]), min_size=1, max_size=2, unique=True))
        arrays = {k: raw_array(dtype=data.draw(st.sampled_from(["int8", "int16", "float32", "object"])),
                               shape=tuple(data.draw(st.lists(st.integers(0, 4), max_size=3) | st.just([12]))),
                               data=data.draw(st.binary(min_size=1, max_size=40))) for k in keys}
    got = p_upload(RecordDict({wire.GLOBAL_RECORD: ArrayRecord(arrays), wire.VALUES: ConfigRecord(values)}))
    assert isinstance(got, (BadReply, ClientUpdate)) and not getattr(got, "unforeseen", False), got
    if isinstance(got, ClientUpdate):
        assert {k: (t.shape, t.dtype) for k, t in got.upload.tensors.items()} == \
            {k: (v.shape, torch.int8) for k, v in REF32.items()}


def test_an_adapter_of_any_size_travels_as_one_packed_array_and_comes_back_exact():
    state = {f"l{i}.{m}.lora_{ab}.weight": torch.randn(4, 3).to(torch.bfloat16 if i % 2 else torch.float32)
             for i in range(30) for m in ("q", "v") for ab in "AB"}  # SmolLM2's 120 tensors, mixed dtypes
    content = wire.content({"round": 1}, state)
    assert list(content.array_records[wire.GLOBAL_RECORD].keys()) == [wire.PACKED]  # Flower: a few objects, not 120
    back = wire.state_of(content)
    assert back.keys() == state.keys() and all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="layout says otherwise"):
        wire.decode_state(content.array_records[wire.GLOBAL_RECORD], wire.layout_of(state)[1:])
