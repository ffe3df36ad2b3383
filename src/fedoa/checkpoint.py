"""Per-round checkpoints: safetensors for tensors, JSON for the rest, never pickle.

Client updates derive every random draw from (seed, round, client, phase), so the state after a
round (global adapter + every client's private adapters) is all an exact resume needs.
A checkpoint folder is written beside the old one, fsynced and swapped in by rename
(:func:`fedoa.io.replace_dir`): a crash at any point leaves a complete checkpoint, the previous
round's or this one's.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedoa.io import atomic_write, replace_dir
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


def save_checkpoint(
    folder: Path, round_: int, global_state: AdapterState, clients: dict[str, ClientState], meta: dict[str, Any]
) -> None:
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "clients").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in global_state.items()}, str(tmp / "global.safetensors"))
    for name, state in clients.items():
        save_file(flatten(state), str(tmp / "clients" / client_file_name(name)))
    (tmp / "state.json").write_text(json.dumps({"round": round_, **meta}, indent=2), encoding="utf-8")
    replace_dir(tmp, folder)


def load_checkpoint(folder: Path) -> tuple[int, AdapterState, dict[str, ClientState], dict[str, Any]] | None:
    """``(round, global_state, client_states, meta)``, or None when there is no complete checkpoint."""
    folder = Path(folder)
    if not (folder / "state.json").is_file():
        old = folder.with_name(folder.name + ".old")  # a crash between the two renames
        if (old / "state.json").is_file():
            folder = old
        else:
            return None
    meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    global_state = load_file(str(folder / "global.safetensors"))
    clients = {
        p.name[: -len(".safetensors")]: load_client_state(p)
        for p in sorted((folder / "clients").glob("*.safetensors"))
    }
    return int(meta.pop("round")), global_state, clients, meta
