"""Flan-style JSON-lines data: ``root/<category>/<task>_{train,test}.jsonl``.

Every problem is reported as a :class:`DataError` naming ``file:line``, so a user can fix a
hand-made file without reading a traceback.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedoa.data.records import Record, check_names, make_record
from fedoa.errors import DataError, warn

TaskSplits = dict[str, tuple[list[Record], list[Record]]]

_TEXT_FIELDS = ("instruction", "output", "task", "category")


def _field(obj: dict[str, Any], name: str, where: str, required: bool) -> str:
    """A string field of a JSON object; missing and non-string values are errors."""
    if name not in obj:
        if required:
            raise DataError(f"missing field {name!r}", where=where)
        return ""
    value = obj[name]
    if not isinstance(value, str):
        raise DataError(
            f"field {name!r} must be a string, got {type(value).__name__}", where=where
        )
    return value


def _parse_line(line: str, where: str, category: str, task: str) -> Record:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", where=where) from None
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", where=where)
    # The task field is only required when the caller does not name the task itself.
    required = {"instruction", "output"} | (set() if task else {"task"})
    values = {name: _field(obj, name, where, name in required) for name in _TEXT_FIELDS}
    return make_record(
        values["instruction"],
        values["output"],
        task=task or values["task"],
        category=category or values["category"],
        where=where,
    )


def load_jsonl_file(path: str | Path, category: str = "", task: str = "") -> list[Record]:
    """Records of one JSON-lines file (UTF-8, blank lines skipped).

    ``category`` / ``task``, when given, override the records' own fields: the folder layout is
    the source of truth (e.g. ReCoRD says ``read_comp_and_common_sense`` but lives in
    ``reading_comprehension``).
    """
    path = Path(path)
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise DataError("file not found", where=str(path)) from None
    except OSError as e:
        raise DataError(f"cannot read file: {e.strerror}", where=str(path)) from None
    records = []
    # streamed line by line (a file larger than memory is read in pieces, only its records are kept);
    # split on b"\n" rather than splitlines(): JSON strings may hold U+2028 etc. unescaped.
    with f:
        for lineno, line_bytes in enumerate(f, start=1):
            if lineno == 1 and line_bytes.startswith(b"\xef\xbb\xbf"):
                line_bytes = line_bytes[3:]
                warn(f"{path}: a UTF-8 byte-order mark at the start of the file was skipped")
            try:
                line = line_bytes.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"not UTF-8 text (byte {e.start} of the line)", where=f"{path}:{lineno}") from None
            if line.strip():
                records.append(_parse_line(line, f"{path}:{lineno}", category, task))
    if not records:
        raise DataError("the file is empty (no records)", where=str(path))
    return records


def _discover(root: Path) -> dict[str, tuple[str, Path, Path]]:
    """task -> (category, train file, test file), for every task found under ``root``."""
    found: dict[str, dict[str, Path]] = {}
    categories: dict[str, str] = {}
    for file in sorted(root.glob("*/*.jsonl")):
        stem = file.name[: -len(".jsonl")]
        for split in ("train", "test"):
            if stem.endswith(f"_{split}"):
                task = stem[: -len(split) - 1]
                previous = categories.setdefault(task, file.parent.name)
                if previous != file.parent.name:
                    raise DataError(
                        f"task {task!r} appears in two categories: {previous!r} and "
                        f"{file.parent.name!r}",
                        where=str(root),
                    )
                found.setdefault(task, {})[split] = file
    check_names(categories, "task", str(root))
    check_names(sorted({c for c in categories.values()}), "category", str(root))
    out = {}
    for task, files in found.items():
        for split in ("train", "test"):
            if split not in files:
                other = next(iter(files.values()))
                raise DataError(
                    f"task {task!r} has no {split} file (expected "
                    f"{other.parent / f'{task}_{split}.jsonl'})",
                    where=str(root),
                )
        out[task] = (categories[task], files["train"], files["test"])
    return out


def load_jsonl_folder(root: str | Path, tasks: tuple[str, ...] | list[str] = ()) -> TaskSplits:
    """task -> (train, test) for ``root/<category>/<task>_{train,test}.jsonl``.

    Ordered by (category, task). ``tasks`` keeps only the named tasks. Each record's category
    and task come from its folder and file name, so they match the keys returned here.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("data folder not found", where=str(root))
    layout = _discover(root)
    if not layout:
        raise DataError(
            "no <category>/<task>_train.jsonl / <task>_test.jsonl files found", where=str(root)
        )
    unknown = [t for t in tasks if t not in layout]
    if unknown:
        raise DataError(
            f"unknown task(s) {unknown}; available: {', '.join(sorted(layout))}", where=str(root)
        )
    wanted = set(tasks) or set(layout)
    ordered = sorted((layout[t][0], t) for t in wanted)
    out: TaskSplits = {}
    for category, task in ordered:
        _, train_file, test_file = layout[task]
        out[task] = (
            load_jsonl_file(train_file, category=category, task=task),
            load_jsonl_file(test_file, category=category, task=task),
        )
    return out
