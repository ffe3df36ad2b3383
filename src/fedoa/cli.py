"""The ``fedoa`` command line.

Errors the user can fix print one line naming the file, line or key, and exit with code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from pathlib import Path

from fedoa.errors import FedoaError


def _quiet_libraries() -> None:
    """Keep the terminal for fedoa's own progress and tables."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*copy construct.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _config(args: argparse.Namespace):
    from fedoa.config import default_config_path, load_config

    path = args.config if args.config else default_config_path()
    return load_config(path, args.set or [])


def cmd_run(args: argparse.Namespace) -> int:
    from fedoa.reports.markdown import print_summary
    from fedoa.runtime.simulation import run_simulation

    cfg = _config(args)
    results = run_simulation(cfg, Path(args.out), progress=not args.quiet, fresh=args.fresh)
    print_summary(results)
    print(f"wall time {results['timing']['wall_seconds']:.0f} s; results in {args.out}/results.json, "
          f"report in {args.out}/report.md")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fedoa.compare import parse_methods, parse_seeds, run_compare
    from fedoa.reports.compare import print_compare

    methods = parse_methods(args.methods)  # unknown names exit 2 before anything runs
    cfg = _config(args)
    summary = run_compare(cfg, methods, parse_seeds(args.seeds, cfg.seed), Path(args.out), progress=not args.quiet,
                          focus=args.focus, report_only=args.report_only)
    print_compare(summary)
    failed = [r["path"] for r in summary["runs"] if r["status"] == "failed"]
    print(f"comparison in {args.out}/compare.md (+ compare.json, compare.png); "
          f"wall time {summary['wall_seconds']:.0f} s" + (f"; FAILED runs: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def cmd_methods(args: argparse.Namespace) -> int:
    from fedoa.algorithms import ALGORITHMS

    for name, cls in sorted(ALGORITHMS.items()):
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        print(f"{name:12s} {doc[0] if doc else ''}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved config as TOML, or every key with its help text."""
    from fedoa.config import RunConfig, config_to_toml

    if args.keys:
        for f in dataclasses.fields(RunConfig):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                for sub in dataclasses.fields(default):
                    print(f"{f.name}.{sub.name} = {getattr(default, sub.name)!r}\n    {sub.metadata.get('help', '')}")
            else:
                print(f"{f.name} = {default!r}\n    {f.metadata.get('help', '')}")
        return 0
    print(config_to_toml(_config(args)), end="")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    """One-time set-up: convert the embedded model to safetensors, fetch the embedded data."""
    from fedoa.data.vader import ensure_vader_files
    from fedoa.model.base import ensure_embedded_model

    print(f"embedded model: {ensure_embedded_model()}")
    print(f"embedded data:  {ensure_vader_files()}")
    return 0


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (default: the embedded default config)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. train.lr=1e-3 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedoa", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run one federated training + ID/OOD evaluation in-process")
    _add_config_args(p)
    p.add_argument("--out", required=True, help="output folder (results.json, report.md, adapters/ ...)")
    p.add_argument("--fresh", action="store_true", help="ignore an unfinished run's checkpoint in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="run several methods x seeds under one protocol and tabulate them")
    _add_config_args(p)
    p.add_argument("--methods", required=True, help="comma-separated method names, e.g. fedit,ditto,fedoa; a "
                   "variant with its own settings and label: shipped=fedoa[fedoa.feature=answer;fed.personal_init=global]")
    p.add_argument("--seeds", default="3", help="number of seeds (from the config's seed on) or a list like 0,1,2")
    p.add_argument("--out", required=True, help="output folder (runs/, compare.md, compare.json, compare.png)")
    p.add_argument("--focus", default="fedoa", help="method whose personal models are compared with every other "
                   "row by paired differences (default: fedoa)")
    p.add_argument("--report-only", action="store_true", help="run nothing; tabulate the runs that have finished")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("setup", help="convert the embedded model and fetch the embedded data (once)")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("methods", help="list the available methods")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("config", help="print the resolved config (or --keys: every key with help)")
    _add_config_args(p)
    p.add_argument("--keys", action="store_true", help="list every key with its default and help")
    p.set_defaults(func=cmd_config)

    from fedoa.runtime.flower.deploy import add_deploy_parser

    add_deploy_parser(sub)  # fedoa deploy ...: several machines (Flower Deployment Engine)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return args.func(args)
    except FedoaError as e:
        print(f"fedoa: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("fedoa: interrupted; rerun the same command to resume from the last finished round", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
