"""Hugging Face datasets: a hub name, a local data folder, or a ``save_to_disk`` folder.

``datasets`` is imported inside the functions only: it is slow to import and most runs use the
embedded data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fedoa.data.records import Record, make_record
from fedoa.errors import DataError, FedoaError

TaskSplits = dict[str, tuple[list[Record], list[Record]]]

FIELDS = ("instruction", "output", "options", "task", "category")
REQUIRED = ("instruction", "output")


def _is_saved_folder(path: str) -> bool:
    """True for folders written by ``Dataset(Dict).save_to_disk`` (load_dataset can't read them)."""
    folder = Path(path)
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _configs(path: str) -> list[str]:
    import datasets

    try:
        return list(datasets.get_dataset_config_names(path))
    except Exception:  # noqa: BLE001 - no list of configurations: loading says what is wrong
        return []


def _open(path: str, config: str = "") -> Any:
    """The dataset's splits as a DatasetDict; any loading failure becomes one FedoaError. A dataset
    with several configurations needs ``data.hf_config`` (datasets would quietly take the first)."""
    import datasets

    saved = _is_saved_folder(path)
    if not saved:
        names = _configs(path)
        if config and names and config not in names:
            raise DataError(f"dataset {path!r} has no configuration {config!r} (it has {names})", where="data.hf_config")
        if not config and len(names) > 1:
            raise DataError(f"dataset {path!r} has several configurations {names}: name one", where="data.hf_config")
    try:
        if saved:
            loaded = datasets.load_from_disk(path)
        else:
            loaded = datasets.load_dataset(path, config or None)
    except Exception as e:  # noqa: BLE001 - datasets raises many unrelated types
        raise FedoaError(f"cannot load dataset {path!r}: {type(e).__name__}: {e}") from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise FedoaError(
            f"dataset {path!r} has no named splits; save a DatasetDict with "
            "'train' and 'test' (or set data.hf_train_split / data.hf_test_split)"
        )
    return loaded


def _check_columns(columns: dict[str, str], available: list[str], path: str) -> None:
    for name in columns:
        if name not in FIELDS:
            raise DataError(
                f"unknown record field (fields: {', '.join(FIELDS)})",
                where=f"data.hf_columns.{name}",
            )
    for name in REQUIRED:
        if name not in columns:
            raise DataError(
                f"is required; map it to one of the columns {available}",
                where=f"data.hf_columns.{name}",
            )
    for name, column in columns.items():
        if column not in available:
            raise DataError(
                f"column {column!r} is not in dataset {path!r} (columns: {available})",
                where=f"data.hf_columns.{name}",
            )


def _split_options(value: Any, where: str) -> tuple[str, ...] | None:
    """Options from a list of strings or a newline-separated string (``- `` prefixes allowed)."""
    if value is None:
        return None
    if isinstance(value, str):
        lines = [line.strip() for line in value.splitlines()]
        opts = [line[2:].strip() if line.startswith("- ") else line for line in lines if line]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        opts = [v.strip() for v in value]
    else:
        raise DataError(
            f"options must be a list of strings or a newline-separated string, got {value!r}",
            where=where,
        )
    return tuple(opts) or None  # empty -> parse them from the instruction instead


def _text(row: dict[str, Any], columns: dict[str, str], name: str, where: str, names: Any) -> str:
    """A string field; ClassLabel integers are turned into their label names."""
    column = columns[name]
    value = row[column]
    if isinstance(value, int) and not isinstance(value, bool) and column in names:
        value = names[column].int2str(value)
    if not isinstance(value, str):
        raise DataError(
            f"column {column!r} ({name}) must be a string, got {type(value).__name__}", where=where
        )
    return value


def _to_record(row: dict[str, Any], columns: dict[str, str], default_task: str, where: str,
               names: Any) -> Record:
    def get(name: str, default: str = "") -> str:
        return _text(row, columns, name, where, names) if name in columns else default

    options = _split_options(row[columns["options"]], where) if "options" in columns else None
    return make_record(
        get("instruction"),
        get("output"),
        task=get("task") or default_task,
        category=get("category"),
        options=options,
        where=where,
    )


def _split_records(ds: Any, split: str, columns: dict[str, str], path: str,
                   default_task: str) -> list[Record]:
    from datasets import ClassLabel

    _check_columns(columns, list(ds.column_names), path)
    names = {c: f for c, f in ds.features.items() if isinstance(f, ClassLabel)}
    rows = ds.select_columns(sorted(set(columns.values()))).to_list()
    return [
        _to_record(row, columns, default_task, f"{path}[{split}]:{i}", names)
        for i, row in enumerate(rows)
    ]


def _group(records: list[Record]) -> dict[str, list[Record]]:
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(r.task, []).append(r)
    return groups


def load_hf(
    path: str,
    columns: dict[str, str],
    train_split: str = "train",
    test_split: str = "test",
    tasks: tuple[str, ...] | list[str] = (),
    config: str = "",
) -> TaskSplits:
    """task -> (train, test) records of a Hugging Face dataset, ordered by (category, task).

    ``columns`` maps record fields to dataset columns; without a task column every record gets
    the dataset's name as task. Options come from an options column or the instruction.
    """
    dsd = _open(path, config)
    for key, split in (("data.hf_train_split", train_split), ("data.hf_test_split", test_split)):
        if split not in dsd:
            raise DataError(
                f"dataset {path!r} has no split {split!r} (splits: {list(dsd)})", where=key
            )
    default_task = Path(path.rstrip("/")).name or path
    train = _group(_split_records(dsd[train_split], train_split, columns, path, default_task))
    test = _group(_split_records(dsd[test_split], test_split, columns, path, default_task))
    available = sorted(set(train) | set(test))
    unknown = [t for t in tasks if t not in available]
    if unknown:
        raise DataError(
            f"unknown task(s) {unknown}; available: {', '.join(available)}", where="data.tasks"
        )
    wanted = [t for t in available if not tasks or t in tasks]
    category = {t: (train.get(t) or test[t])[0].category for t in wanted}
    ordered = sorted(wanted, key=lambda t: (category[t], t))
    return {t: (train.get(t, []), test.get(t, [])) for t in ordered}
