"""A :class:`~fedoa.algorithms.base.StepMemo` on disk: one safetensors file per memoized step.

``fedoa compare`` gives every run of a comparison the same memo folder, so a local step that
several methods compute identically (the plain task-loss step on the same global adapter, data
and seeds) runs once per client and round, also across restarts of the comparison.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from fedoa.algorithms.base import Phase
from fedoa.io import atomic_write
from fedoa.model.adapters import AdapterState


class DiskMemo:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.hits = 0

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def get(self, key: str) -> tuple[AdapterState, Phase] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            phase = Phase(**json.loads(f.metadata()["phase"]))
        phase.reused = True
        self.hits += 1
        return state, phase

    def put(self, key: str, state: AdapterState, phase: Phase) -> None:
        meta = json.dumps({**asdict(phase), "reused": False})
        tensors = {k: v.contiguous() for k, v in state.items()}
        atomic_write(self._path(key), lambda tmp: save_file(tensors, tmp, metadata={"phase": meta}))
