"""Arguments several verbs share."""
from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file of overrides on the code defaults (default: the embedded default "
                   "preset, src/fedoa/configs/default.toml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. train.lr=1e-3 (repeatable)")


def load(args: argparse.Namespace):
    """The config a verb runs with: the file (or the embedded default preset) and the overrides."""
    from fedoa.config import default_config_path, load_config

    return load_config(args.config or default_config_path(), args.set or [])


def add_run_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's folder (fedoa run --out)")


def add_quiet_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")
