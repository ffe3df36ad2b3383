"""Crash-safe writes: every file fedoa writes goes through here; and the lock on an output folder.

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


def sha256_file(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class FolderLock:
    """An exclusive lock on a folder (``flock`` on ``<folder>/.fedoa.lock``, which names its holder:
    pid and host). The OS releases it when the holder exits, however it exits (SIGKILL too), so a
    stale lock file never blocks a later run. ``holder()`` says who holds it when taking it fails.
    The holder removes the file when it releases the lock; a taker that locked a file that was
    removed meanwhile (not the one at the path any more) tries again."""

    NAME = ".fedoa.lock"

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / self.NAME
        self.fd: int | None = None

    def acquire(self) -> bool:
        import fcntl
        import socket

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder removed it as we opened it: take the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self.fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8").strip() or "an unknown process"
        except OSError:
            return "an unknown process"

    def release(self) -> None:
        if self.fd is not None:
            try:
                self.path.unlink()
            except OSError:
                pass
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
