"""The Flower app's run config: every fedoa setting as a Flower config key, plus the deployment's.

Flower run configs are flat (``section.key``) and hold only bool, int, float and str values.
fedoa's keys map one to one (``train.lr = 0.002``); list and table values (``lora.target_modules``,
``data.hf_columns``) travel as JSON text. The deployment's own keys sit under ``deploy.``.
The app (:func:`app_dir`, written from the settings classes on first use, so a new method or key
needs no regenerated file) lists every key at the embedded default preset's value, so
``flwr run "$(fedoa deploy app)" <connection> --run-config "train.lr=0.01 deploy.num-nodes=4"``
works as Flower users expect; ``fedoa deploy run`` passes only the keys that differ.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import tomli_w

from fedoa.config import RunConfig, build, default_config_path, flat_keys, load_config
from fedoa.errors import ConfigError

DEPLOY = "deploy"


@dataclass
class DeploySettings:
    """What only a deployment needs (keys ``deploy.<name with dashes>``)."""

    out_dir: str = "run"  # under the SuperLink's output root (fedoa deploy superlink --output-root)
    num_nodes: int = 1  # clients (distinct client-names) to wait for before round 1
    eval_path: str = ""  # shared test sets every node reads for OOD ("" = ID only)
    round_timeout: float = 0.0  # seconds to wait for a round's replies (0 = until each replied or is gone)
    eval_timeout: float = 0.0  # the same for the evaluation
    join_timeout: float = 600.0  # seconds to wait for num-nodes clients at the start
    fresh: bool = False  # ignore an unfinished run's checkpoint
    replace: bool = False  # replace another run's finished results in out-dir (else refused)
    poll_interval: float = 0.25  # seconds between checks for replies (a local call to the SuperLink)
    node_auth: bool = False  # SuperNodes authenticate (keys): a client name stays bound to its first node
    record_outcomes: bool = False  # nodes send per-record outcomes of their test sets (default: counts only)

    @staticmethod
    def key(name: str) -> str:
        return f"{DEPLOY}.{name.replace('_', '-')}"


def flatten(cfg: RunConfig, deploy: DeploySettings | None = None) -> dict[str, Any]:
    """``{"train.lr": 0.002, ..., "deploy.num-nodes": 4}``: Flower config values only."""
    flat = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flat_keys(cfg).items()}
    for f in fields(DeploySettings):
        flat[DeploySettings.key(f.name)] = getattr(deploy or DeploySettings(), f.name)
    return flat


def unflatten(flat: dict[str, Any]) -> tuple[RunConfig, DeploySettings]:
    """The run's config and deployment settings from a Flower run config (strictly validated)."""
    shape = RunConfig().to_dict()
    nested: dict[str, Any] = {}
    deploy = DeploySettings()
    names = {DeploySettings.key(f.name): f for f in fields(DeploySettings)}
    for key, value in flat.items():
        if key in names:
            f = names[key]
            want = type(getattr(deploy, f.name))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise ConfigError(f"must be a {want.__name__}, got {value!r}", where=key)
            setattr(deploy, f.name, value)
            continue
        section, _, field = key.partition(".")
        if not field:
            nested[key] = value
            continue
        default = shape.get(section, {}).get(field) if isinstance(shape.get(section), dict) else None
        if isinstance(default, (list, dict)) and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ConfigError(f"expected JSON text, got {value!r} ({e.msg})", where=key) from None
        nested.setdefault(section, {})[field] = value
    return build(nested, "run config"), deploy


def app_config() -> dict[str, Any]:
    """The checked-in app's ``[tool.flwr.app.config]``: the embedded default preset, flat."""
    return flatten(load_config(default_config_path()))


def app_pyproject() -> str:
    import fedoa

    doc = {
        "project": {
            "name": "fedoa-app", "version": fedoa.__version__,
            "description": "fedoa on Flower: federated adapters (FedOA and baselines), one SuperNode per client",
            "license": "Apache-2.0",
            # The apps are modules of the installed fedoa package; SuperLink and SuperNodes run them in
            # their own environment (runtime dependency installation off), so nothing is listed here.
            "dependencies": [],
        },
        "tool": {"flwr": {"app": {
            "publisher": "fedoa",
            "components": {"serverapp": "fedoa.runtime.flower.server_app:app",
                           "clientapp": "fedoa.runtime.flower.relay:app"},
            "config": nest(app_config()),
        }}},
    }
    head = ("# The Flower app of fedoa, generated from the settings classes of this fedoa (fedoa deploy app).\n"
            "# Every key of a fedoa config is a run-config key here (values: the embedded default preset), e.g.\n"
            "#   flwr run <this folder> <connection> --run-config 'train.lr=0.01 deploy.num-nodes=4'\n")
    return head + tomli_w.dumps(doc)


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"train.lr": x}`` -> ``{"train": {"lr": x}}`` (Flower flattens it back the same way)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        if name:
            out.setdefault(section, {})[name] = value
        else:
            out[key] = value
    return out


def overrides(cfg: RunConfig, deploy: DeploySettings) -> dict[str, Any]:
    """The run-config keys that differ from the checked-in app's defaults."""
    defaults = app_config()
    return {k: v for k, v in flatten(cfg, deploy).items() if defaults.get(k) != v}



def app_dir() -> Path:
    """The Flower app's folder for this fedoa (its ``pyproject.toml`` only: no code, no data),
    written under the cache on first use; its name is the content's digest, so two fedoa versions
    never share one."""
    import hashlib

    from fedoa.io import write_text
    from fedoa.paths import cache_dir

    text = app_pyproject()
    folder = cache_dir() / "flower-app" / hashlib.sha256(text.encode()).hexdigest()[:16]
    if not (folder / "pyproject.toml").is_file():
        write_text(folder / "pyproject.toml", text)
    return folder
