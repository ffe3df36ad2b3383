"""THE parser of every reply a node sends: hello (``query``), ``train`` and ``evaluate``.

A node may be broken or hostile, so nothing it sends is trusted: :func:`parse` turns any reply into
either its decoded content or a :class:`BadReply` naming the first problem, and the transport
records that as the client's failure for the round. No exception of any kind leaves :func:`parse`
(``tests/runtime/flower/test_replies.py`` throws thousands of malformed replies at it).

Order of the checks, cheapest first: the record layout (only the records the message type has),
then every plain value (type, range, finiteness, text length), then the tensors' names and shapes
(the ``layout``, which must be the global adapter's exactly) and the one packed array's dtype and
byte size from the ``ArrayRecord``'s metadata, and only then is anything decoded (``numpy.load``
without pickle, of a buffer whose size is already bounded), and the decoded array must match the
metadata it came with.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedoa.runtime.flower import wire

if TYPE_CHECKING:
    from fedoa.algorithms.base import ClientUpdate
    from fedoa.model.adapters import AdapterState

#: one text value (JSON of scores, phases, test-set reports) may not exceed this
MAX_TEXT = 4 << 20
MAX_KEYS = 64  # plain values in one reply
MAX_ITEMS = 10_000  # entries of one list or table inside a JSON value
MAX_COUNT = 10**9  # example counts, set sizes, steps
MAX_NAME = 200
MAX_RANK = 1 << 16
NAME = re.compile(r"^[A-Za-z0-9._-]+$")
#: bytes of an ``.npy`` header beyond the raw data (numpy writes 128 or a few hundred)
NPY_HEADER = 4096


class BadReply(ValueError):
    """What is wrong with a node's reply (the message goes into results.json's failures)."""

    #: True when no explicit check caught the problem (the last-resort guard did)
    unforeseen = False


@dataclass
class Report:
    """A node's hello: who it is and what it can evaluate (sizes and (task, category) pairs)."""

    client: str
    train: int
    train_pairs: list[list[str]]
    test: dict[str, Any]
    sets: dict[str, dict[str, Any]]
    rank: int  # the LoRA rank the node trains at (lora-rank)

    def as_dict(self) -> dict[str, Any]:
        return {"client": self.client, "train": self.train, "train-pairs": self.train_pairs, "test": self.test,
                "sets": self.sets, "rank": self.rank}


# ---------------------------------------------------------------------------- the one entry point


def parse(kind: str, content: Any, **expect: Any) -> Any:
    """The decoded reply of message type ``kind``, or a :class:`BadReply`. Never raises.

    ``expect``: ``query``: ``max_rank`` (``lora.r``); ``train``: ``client``, ``round``, ``reference``
    (the global adapter sent, cut to the client's rank), ``upload`` (``fed.upload``); ``evaluate``: ``client``, ``pairs`` (the (kind, set) pairs assigned to the node),
    ``sizes`` (records per set), ``records`` (whether per-record outcomes were asked for)."""
    try:
        if kind == wire.QUERY:
            return _report(content, expect.get("max_rank", MAX_RANK))
        if kind == wire.TRAIN:
            return _update(content, expect["client"], expect["round"], expect["reference"],
                           expect.get("upload", "float32"))
        if kind == wire.EVALUATE:
            return _scores(content, expect["client"], expect["pairs"], expect["sizes"], expect.get("records", False))
        return BadReply(f"unknown message type {kind!r}")
    except BadReply as e:
        return e
    except RecursionError:
        return BadReply("nested too deeply")
    except Exception as e:  # noqa: BLE001 - whatever slipped past the checks is still the node's fault
        bad = BadReply(f"{type(e).__name__}: {str(e)[:200]}")
        bad.unforeseen = True
        return bad


def seconds_of(content: Any) -> float:
    """The work seconds a reply reports (timings only): 0.0 unless a finite, non-negative number."""
    try:
        x = _values(content).get("seconds", 0.0)
        return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1e9 else 0.0
    except Exception:  # noqa: BLE001
        return 0.0


# ---------------------------------------------------------------------------- plain values


def _values(content: Any) -> dict[str, Any]:
    configs = content.config_records
    if set(configs.keys()) - {wire.VALUES}:
        raise BadReply(f"unexpected config records {sorted(configs.keys())[:3]}")
    if wire.VALUES not in configs:
        raise BadReply("no 'fedoa' values")
    values = dict(configs[wire.VALUES])
    if len(values) > MAX_KEYS:
        raise BadReply(f"{len(values)} values (at most {MAX_KEYS})")
    return values


def _no_other_records(content: Any, arrays_allowed: bool) -> None:
    if len(content.metric_records):
        raise BadReply("unexpected metric records")
    names = set(content.array_records.keys())
    if names - ({wire.GLOBAL_RECORD} if arrays_allowed else set()):
        raise BadReply(f"unexpected array records {sorted(names)[:3]}")


def _text(values: dict[str, Any], key: str, limit: int = MAX_TEXT) -> str:
    v = values.get(key)
    if not isinstance(v, str):
        raise BadReply(f"{key} must be text, got {type(v).__name__}")
    if len(v) > limit:
        raise BadReply(f"{key} is {len(v)} characters long (at most {limit})")
    return v


def _json(values: dict[str, Any], key: str) -> Any:
    try:
        return json.loads(_text(values, key), parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise BadReply(f"{key} is not JSON ({e.msg})") from None


def _no_constant(name: str) -> Any:
    raise BadReply(f"non-finite number {name} in JSON")


def _name(x: Any, what: str) -> str:
    if not isinstance(x, str) or not x or len(x) > MAX_NAME or not NAME.match(x) or x in (".", ".."):
        raise BadReply(f"{what} {str(x)[:60]!r} is not a name")
    return x


def _int(x: Any, what: str, lo: int = 0, hi: int = MAX_COUNT) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
        raise BadReply(f"{what} must be an integer in [{lo}, {hi}], got {str(x)[:40]}")
    return x


def _float(x: Any, what: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not lo <= x <= hi:
        raise BadReply(f"{what} must be a finite number in [{lo:g}, {hi:g}], got {str(x)[:40]}")
    return float(x)


def _list(x: Any, what: str, limit: int = MAX_ITEMS) -> list:
    if not isinstance(x, list) or len(x) > limit:
        raise BadReply(f"{what} must be a list of at most {limit} items")
    return x


def _table(x: Any, what: str, limit: int = MAX_ITEMS) -> dict:
    if not isinstance(x, dict) or len(x) > limit:
        raise BadReply(f"{what} must be a table of at most {limit} entries")
    return x


def _pairs(x: Any, what: str) -> list[list[str]]:
    out = []
    for p in _list(x, what):
        if not isinstance(p, list) or len(p) != 2 or not all(isinstance(s, str) and 0 < len(s) <= MAX_NAME for s in p):
            raise BadReply(f"{what}: each entry must be [task, category]")
        out.append([p[0], p[1]])
    return out


def _set_desc(x: Any, what: str) -> dict[str, Any]:
    d = _table(x, what)
    if set(d) != {"size", "pairs"}:
        raise BadReply(f"{what} must have exactly size and pairs")
    return {"size": _int(d["size"], f"{what}.size"), "pairs": _pairs(d["pairs"], f"{what}.pairs")}


def _client(values: dict[str, Any], expected: str) -> None:
    got = values.get("client")
    if got != expected:
        raise BadReply(f"it came from client {str(got)[:60]!r}")


# ---------------------------------------------------------------------------- hello


def _report(content: Any, max_rank: int) -> Report:
    _no_other_records(content, arrays_allowed=False)
    values = _values(content)
    client = _name(values.get("client"), "client")
    sets = {_name(k, "test set"): _set_desc(v, f"sets.{k}") for k, v in _table(_json(values, "sets"), "sets").items()}
    return Report(client, _int(values.get("train"), "train"), _pairs(_json(values, "train-pairs"), "train-pairs"),
                  _set_desc(_json(values, "test"), "test"), sets, _int(values.get("rank"), "rank (lora.r)", 1, max_rank))


# ---------------------------------------------------------------------------- train


def _phases(x: Any) -> list:
    from fedoa.algorithms.base import Phase

    out = []
    for i, p in enumerate(_list(x, "phases", 100)):
        p = _table(p, f"phases[{i}]", 10)
        if not {"phase", "steps", "examples", "seconds", "metrics"} <= set(p) <= {"phase", "steps", "examples",
                                                                                   "seconds", "metrics", "reused"}:
            raise BadReply(f"phases[{i}] has keys {sorted(p)[:6]}")
        metrics = {_name(k, f"phases[{i}] metric"): _float(v, f"phases[{i}].metrics.{k}")
                   for k, v in _table(p["metrics"], f"phases[{i}].metrics", 200).items()}
        reused = p.get("reused", False)
        if not isinstance(reused, bool):
            raise BadReply(f"phases[{i}].reused must be true or false")
        out.append(Phase(_name(p["phase"], f"phases[{i}].phase"), _int(p["steps"], f"phases[{i}].steps"),
                         _int(p["examples"], f"phases[{i}].examples"),
                         _float(p["seconds"], f"phases[{i}].seconds", 0.0, 1e9), metrics, reused))
    return out


def _update(content: Any, client: str, round_: int, reference: AdapterState, fmt: str) -> ClientUpdate:
    import torch

    from fedoa.algorithms.base import ClientUpdate

    _no_other_records(content, arrays_allowed=True)
    values = _values(content)
    _client(values, client)
    if values.get("round") != round_:
        raise BadReply(f"it answers round {str(values.get('round'))[:20]}, not {round_}")
    examples = _int(values.get("num-examples"), "num-examples", 1)
    phases = _phases(_json(values, "phases"))
    if wire.GLOBAL_RECORD not in content.array_records:
        if wire.DTYPES in values or wire.UPLOAD in values or wire.LAYOUT in values:
            raise BadReply("dtypes, upload or layout without tensors")
        return ClientUpdate(client, None, examples, phases)
    record = content.array_records[wire.GLOBAL_RECORD]
    if fmt != "float32" or wire.UPLOAD in values:
        return ClientUpdate(client, None, examples, phases, upload=_upload(values, record, reference, fmt))
    _check_layout(values, reference)  # names and shapes first: the clearest message
    bf16 = sorted(k for k, v in reference.items() if v.dtype == torch.bfloat16)
    dtypes = _table(_json(values, wire.DTYPES), "dtypes") if wire.DTYPES in values else {}
    if dtypes != {k: "bfloat16" for k in bf16}:
        raise BadReply("dtypes differ from the global adapter's bfloat16 tensors")
    tensors = decode_checked(record, values, reference, "float32")
    state = {k: t.to(torch.bfloat16) if k in dtypes else t for k, t in tensors.items()}
    return ClientUpdate(client, state, examples, phases)


def _upload(values: dict[str, Any], record: Any, reference: AdapterState, fmt: str):
    """A compressed change (``fed.upload`` bfloat16 or int8): its format and scales from the values,
    its layout and packed array's size and dtype checked, then decoded."""
    import torch

    from fedoa.model.uploads import Upload

    if wire.DTYPES in values:
        raise BadReply("dtypes beside a compressed upload")
    meta = _table(_json(values, wire.UPLOAD), "upload", 2)
    if fmt == "float32" or meta.get("format") != fmt:
        raise BadReply(f"the upload is in format {str(meta.get('format'))[:20]!r}, the run asks for {fmt!r}")
    scales = _table(meta.get("scales"), "upload.scales")
    if fmt == "int8" and set(scales) != set(reference) or fmt != "int8" and scales:
        raise BadReply("upload.scales do not name exactly the upload's int8 tensors")
    scales = {k: _float(v, f"upload.scales.{k[:60]}", 0.0, 1e30) for k, v in scales.items()}
    arrays = decode_checked(record, values, reference, wire.UPLOAD_WIRE_DTYPE[fmt])
    if fmt == "bfloat16":
        arrays = {k: t.view(torch.bfloat16) for k, t in arrays.items()}
    return Upload(fmt, arrays, scales)


def _check_layout(values: dict[str, Any], reference: AdapterState) -> list[list[Any]]:
    """The reply's layout must be the reference's exactly: the same keys, in order, the same shapes."""
    got = _json(values, wire.LAYOUT)
    if not isinstance(got, list) or len(got) > MAX_ITEMS or not all(
            isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], list) for e in got):
        raise BadReply("layout must be a list of [key, shape] entries")
    want = wire.layout_of(reference)
    names, want_names = [e[0] for e in got], [k for k, _ in want]
    if set(names) != set(want_names) or len(names) != len(want_names):
        missing, extra = sorted(set(want_names) - set(names)), sorted(set(names) - set(want_names))
        raise BadReply(f"tensor names differ from the global adapter's (missing {missing[:2]}, "
                       f"unexpected {[k[:60] for k in extra[:2]]})")
    if names != want_names:
        raise BadReply("layout is not in key order")
    for (k, shape), (_, want_shape) in zip(got, want):
        if shape != want_shape:
            raise BadReply(f"tensor {k} has shape {tuple(shape)[:8]}, expected {tuple(want_shape)}")
    return want


def decode_checked(record: Any, values: dict[str, Any], reference: AdapterState, dtype: str) -> AdapterState:
    """The tensors of a packed ``record`` in wire dtype ``dtype``, after checking the layout against
    ``reference`` and the one array's dtype and size from its metadata (nothing is decoded before)."""
    import io
    import math

    import numpy as np
    import torch

    layout = _check_layout(values, reference)
    if set(record.keys()) != {wire.PACKED}:
        raise BadReply(f"arrays {[str(k)[:60] for k in sorted(record.keys())[:3]]}, expected one {wire.PACKED!r} array")
    arr = record[wire.PACKED]
    total = sum(math.prod(shape) for _, shape in layout)
    if arr.stype != "numpy.ndarray":
        raise BadReply(f"the packed array is serialized as {str(arr.stype)[:40]!r}")
    if tuple(arr.shape) != (total,):
        raise BadReply(f"the packed array has shape {tuple(arr.shape)[:8]}, expected ({total},)")
    if arr.dtype != dtype:
        raise BadReply(f"the packed array has dtype {str(arr.dtype)[:20]}, expected {dtype}")
    expected_bytes = total * np.dtype(dtype).itemsize
    if not expected_bytes <= len(arr.data) <= expected_bytes + NPY_HEADER:
        raise BadReply(f"the packed array holds {len(arr.data)} bytes, expected {expected_bytes} plus a header")
    try:
        a = np.load(io.BytesIO(arr.data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise BadReply(f"the packed array cannot be decoded ({type(e).__name__})") from None
    if not isinstance(a, np.ndarray) or a.shape != (total,) or str(a.dtype) != dtype:
        raise BadReply("the packed array's data do not match its metadata")
    return wire.unpack(torch.from_numpy(np.array(a, copy=True)), layout)


# ---------------------------------------------------------------------------- evaluate


@dataclass
class SetResult:
    """One (model kind, test set) score a node sent: accuracies, counts, optional per-record outcomes."""

    kind: str
    set: str
    options: float
    generation: float
    options_hits: str = ""
    generation_hits: str = ""
    rouge: dict[str, list[float]] | None = None
    counts: dict[str, int] | None = None


def _accuracy(x: Any, what: str) -> float:
    return math.nan if x is None else _float(x, what, 0.0, 1.0)


def _hits(x: Any, what: str, size: int) -> str:
    if not isinstance(x, str) or len(x) > size or set(x) - set("01-"):
        raise BadReply(f"{what} must be at most {size} outcomes of '0', '1' or '-'")
    return x


def _scores(content: Any, client: str, pairs: list[tuple[str, str]], sizes: dict[str, int], records: bool
            ) -> list[SetResult]:
    _no_other_records(content, arrays_allowed=False)
    values = _values(content)
    _client(values, client)
    assigned = {(k, s) for k, s in pairs}
    out, seen = [], set()
    for i, row in enumerate(_list(_json(values, "scores"), "scores", max(1, len(assigned)))):
        row = _table(row, f"scores[{i}]", 12)
        kind, s = row.get("kind"), row.get("set")
        if (kind, s) not in assigned or (kind, s) in seen:
            raise BadReply(f"scores[{i}] is for {str(kind)[:30]!r} on {str(s)[:30]!r}, which this node was not "
                           "asked to score (or scored twice)")
        seen.add((kind, s))
        size = sizes[s]
        res = SetResult(kind, s, _accuracy(row.get("options"), f"scores[{i}].options"),
                        _accuracy(row.get("generation"), f"scores[{i}].generation"))
        counts = _table(row.get("counts", {}), f"scores[{i}].counts", 8)
        for k, v in counts.items():
            if k not in ("scored", "options_right", "generation_right"):
                raise BadReply(f"scores[{i}].counts has {str(k)[:30]!r}")
            _int(v, f"scores[{i}].counts.{k}", 0, size)
        if counts.get("options_right", 0) > counts.get("scored", size) or \
                counts.get("generation_right", 0) > counts.get("scored", size):
            raise BadReply(f"scores[{i}]: more right than scored")
        res.counts = counts
        if "options_hits" in row or "generation_hits" in row or "rouge" in row:
            if not records:
                raise BadReply(f"scores[{i}] holds per-record outcomes, which were not asked for")
            res.options_hits = _hits(row.get("options_hits", ""), f"scores[{i}].options_hits", size)
            res.generation_hits = _hits(row.get("generation_hits", ""), f"scores[{i}].generation_hits", size)
            rouge = _table(row.get("rouge", {}), f"scores[{i}].rouge", 8)
            res.rouge = {_name(t, "rouge type"): [_float(x, f"scores[{i}].rouge", 0.0, 1.0)
                                                    for x in _list(v, f"scores[{i}].rouge.{t}", size)]
                         for t, v in rouge.items()}
        out.append(res)
    if seen != assigned:
        raise BadReply(f"{len(assigned - seen)} assigned score(s) missing")
    return out
