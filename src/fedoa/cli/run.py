"""``fedoa run``: one federated training + ID/OOD evaluation, in this process."""
from __future__ import annotations

import argparse
from pathlib import Path

from fedoa.cli.common import add_config_args, add_quiet_arg, load

EXAMPLE = """example:
  fedoa run --out runs/default                       # the embedded default (make run)
  fedoa run --out runs/flan8 --set data.source=jsonl --set data.path=/path/to/flan8 \\
      --set data.train_per_client=64 --set data.test_per_client=50
"""


def run(args: argparse.Namespace) -> int:
    cfg = load(args)  # before the runtime's imports (torch, transformers: seconds): bad input fails at once
    from fedoa.reports.markdown import print_summary
    from fedoa.runtime.inprocess import run_simulation

    results = run_simulation(cfg, Path(args.out), progress=not args.quiet, fresh=args.fresh,
                             replace=args.replace)
    print_summary(results)
    print(f"wall time {results.timing['wall_seconds']:.0f} s; results in {args.out}/results.json, "
          f"report in {args.out}/report.md")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run one federated training + ID/OOD evaluation in-process", epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--out", required=True, help="output folder (results.json, report.md, adapters/ ...)")
    p.add_argument("--fresh", action="store_true", help="ignore an unfinished run's checkpoint in OUT")
    p.add_argument("--replace", action="store_true", help="replace the finished results of a run made with another "
                   "config in OUT (without it such a folder is refused, --fresh or not; the same config again "
                   "simply reruns)")
    add_quiet_arg(p)
    p.set_defaults(func=run)
