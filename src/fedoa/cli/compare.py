"""``fedoa compare``: several methods x seeds under one protocol, one table with intervals."""
from __future__ import annotations

import argparse
from pathlib import Path

from fedoa.cli.common import add_config_args, add_quiet_arg, load

EXAMPLE = """example:
  fedoa compare --methods fedit,ditto,local,feddpa,fedoa --seeds 3 \\
      --config benchmarks/flan8_cpu.toml --out runs/flan8-cpu
  fedoa compare --methods 'fedoa,shipped=fedoa[fedoa.feature=answer;fed.personal_init=global]' \\
      --seeds 2 --out runs/variants
"""


def compare(args: argparse.Namespace) -> int:
    from fedoa.compare.runner import parse_methods, parse_seeds, run_compare, seeds_vary_training_data
    from fedoa.compare.render import print_compare

    methods = parse_methods(args.methods)  # unknown names exit 2 before anything runs
    cfg = seeds_vary_training_data(load(args))  # each seed its own training subset, unless the config says
    summary = run_compare(cfg, methods, parse_seeds(args.seeds, cfg.seed), Path(args.out), progress=not args.quiet,
                          focus=args.focus, report_only=args.report_only, budget=args.budget)
    print_compare(summary)
    failed = [r["path"] for r in summary["runs"] if r["status"] == "failed"]
    print(f"comparison in {args.out}/compare.md (+ compare.json, compare.png); "
          f"wall time {summary['wall_seconds']:.0f} s" + (f"; FAILED runs: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="run several methods x seeds under one protocol and tabulate them",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--methods", required=True, help="comma-separated method names, e.g. fedit,ditto,fedoa; a "
                   "variant with its own settings and label: shipped=fedoa[fedoa.feature=answer;fed.personal_init=global]")
    p.add_argument("--seeds", default="3", help="number of seeds (from the config's seed on) or a list like "
                   "0,1,2; each seed also draws its own training subsets (data.train_subset_seed = \"run\") "
                   "unless the config names that key")
    p.add_argument("--out", required=True, help="output folder (runs/, compare.md, compare.json, compare.png)")
    p.add_argument("--focus", default="fedoa", help="method whose personal models are compared with every other "
                   "row by paired differences (default: fedoa)")
    p.add_argument("--report-only", action="store_true", help="run nothing; tabulate the runs that have finished")
    p.add_argument("--budget", type=float, default=0.0, metavar="SECONDS", help="a wall-time budget: start no run "
                   "once the time left is shorter than the longest run so far (reused runs' recorded times count); "
                   "the rest are 'not started' and a later call with the same --out does them (default 0: none)")
    add_quiet_arg(p)
    p.set_defaults(func=compare)
