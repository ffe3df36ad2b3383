"""Per-round checkpoints: safetensors for tensors, JSON for the rest, never pickle.

Client updates derive every random draw from (seed, round, client, phase), so the state after a
round (global adapter + every client's private adapters) is all an exact resume needs.

A checkpoint folder is written beside the old one (``checkpoint.tmp``) with the SHA-256 of every
tensor file in its ``state.json``, fsynced, read back and verified, and only then swapped in by
rename; the previous checkpoint stays as ``checkpoint.prev`` until the next one is verified. On
load a checkpoint whose files are missing, truncated or altered (checksum) falls back to the
previous one (with a warning); when both are damaged the run stops with one line (exit 2).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedoa.errors import FedoaError, warn
from fedoa.io import atomic_write, fsync_dir, fsync_tree, sha256_file
from fedoa.model.adapters import AdapterState

ClientState = dict[str, AdapterState]
_SEP = "::"
_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def flatten(state: ClientState) -> dict[str, torch.Tensor]:
    return {f"{slot}{_SEP}{k}": v.contiguous() for slot, sd in state.items() for k, v in sd.items()}


def unflatten(tensors: dict[str, torch.Tensor]) -> ClientState:
    out: ClientState = {}
    for key, v in tensors.items():
        slot, k = key.split(_SEP, 1)
        out.setdefault(slot, {})[k] = v
    return out


def client_file_name(name: str) -> str:
    if not _SAFE.match(name) or name in (".", ".."):
        raise ValueError(f"client name {name!r} cannot be used as a file name")
    return f"{name}.safetensors"


def save_client_state(path: Path, state: ClientState) -> None:
    tensors = flatten(state)
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def load_client_state(path: Path) -> ClientState:
    return unflatten(load_file(str(path)))


class DamagedCheckpoint(ValueError):
    """A checkpoint folder whose files are missing, truncated or do not match their checksums."""


def save_checkpoint(
    folder: Path, round_: int, global_state: AdapterState, clients: dict[str, ClientState], meta: dict[str, Any]
) -> None:
    folder = Path(folder)
    tmp, prev = _sibling(folder, "tmp"), _sibling(folder, "prev")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "clients").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in global_state.items()}, str(tmp / "global.safetensors"))
    for name, state in clients.items():
        save_file(flatten(state), str(tmp / "clients" / client_file_name(name)))
    files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*.safetensors"))
    sums = {f: sha256_file(tmp / f) for f in files}
    (tmp / "state.json").write_text(json.dumps({"round": round_, "sha256": sums, **meta}, indent=2), encoding="utf-8")
    fsync_tree(tmp)
    _read(tmp)  # verified as written before it replaces anything
    if folder.exists():
        if prev.exists():
            shutil.rmtree(prev)
        os.replace(folder, prev)  # the previous good checkpoint stays until the next one is verified
        fsync_dir(folder.parent)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)


def _sibling(folder: Path, suffix: str) -> Path:
    return folder.with_name(f"{folder.name}.{suffix}")


def _read(folder: Path) -> tuple[int, AdapterState, dict[str, ClientState], dict[str, Any]]:
    try:
        meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        sums = meta.pop("sha256", None)
        round_ = int(meta.pop("round"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DamagedCheckpoint(f"state.json unreadable ({type(e).__name__})") from None
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors"))
    if sums is None:  # written before checksums (an unfinished run of an older fedoa): read unverified
        sums = {}
    elif not isinstance(sums, dict) or sorted(sums) != files:
        raise DamagedCheckpoint("its files are not the ones its state.json lists")
    for f, digest in sums.items():
        if sha256_file(folder / f) != digest:
            raise DamagedCheckpoint(f"{f} does not match its checksum (truncated or altered)")
    try:
        global_state = load_file(str(folder / "global.safetensors"))
        clients = {p.name[: -len(".safetensors")]: load_client_state(p)
                   for p in sorted((folder / "clients").glob("*.safetensors"))}
    except Exception as e:  # noqa: BLE001 - a file that passed its checksum but not safetensors
        raise DamagedCheckpoint(f"unreadable tensors ({type(e).__name__})") from None
    return round_, global_state, clients, meta


def load_checkpoint(folder: Path) -> tuple[int, AdapterState, dict[str, ClientState], dict[str, Any]] | None:
    """``(round, global_state, client_states, meta)`` of the newest good checkpoint (the previous one
    when the newest is damaged), or None when there is none. Both damaged: a one-line error."""
    folder = Path(folder)
    candidates = [c for c in (folder, _sibling(folder, "prev"), _sibling(folder, "old")) if (c / "state.json").exists()]
    problems = []
    for c in candidates:
        try:
            found = _read(c)
        except DamagedCheckpoint as e:
            problems.append(f"{c.name}: {e}")
            continue
        if problems:
            warn(f"the checkpoint in {folder.parent} is damaged ({problems[0]}); resuming from the previous "
                 f"one (after round {found[0]})")
            if c != folder and folder.exists():  # kept aside, so the next save never rotates it into .prev
                damaged = _sibling(folder, "damaged")
                if damaged.exists():
                    shutil.rmtree(damaged)
                os.replace(folder, damaged)
        return found
    if problems:
        raise FedoaError(f"the checkpoint is damaged ({'; '.join(problems)}) and no good one is left: rerun with "
                         "--fresh to start over", where=str(folder.parent))
    return None
