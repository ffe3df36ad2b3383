"""Crash-safe writes: every file fedoa writes goes through here.

A file is written to a temporary name in its folder, flushed and fsynced, renamed over the
target, and the folder is fsynced so the rename itself survives a power cut. A reader never sees
half a file; a crash leaves the old file or the new one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync_dir(folder: str | Path) -> None:
    """Make a folder's entries (renames, new files) durable."""
    fd = os.open(str(folder), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """fsync every file and folder under ``folder`` (after writing a whole folder)."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb+") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """``write(tmp_path)`` fills a temporary file that then replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n")


def replace_dir(tmp: Path, target: Path) -> None:
    """Swap a fully written folder ``tmp`` in as ``target`` (the old one is kept as
    ``target.old`` until the new one is in place, so a crash leaves one of them complete)."""
    fsync_tree(tmp)
    old = target.with_name(target.name + ".old")
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
        fsync_dir(target.parent)
    os.replace(tmp, target)
    fsync_dir(target.parent)
    if old.exists():
        shutil.rmtree(old)


def read_jsonl(path: str | Path, torn_tail: bool = False) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file (``[]`` when it is absent). A bad line raises ValueError
    naming its number; with ``torn_tail`` a last line without its newline (a write cut by a kill)
    is dropped instead."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if torn_tail and lines and lines[-1].strip():
        lines = lines[:-1]
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError as e:
            raise ValueError(f"line {number}: {e}") from None
    return out
