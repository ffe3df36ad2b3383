"""``fedoa config``: the config a run would use, with every key's help."""
from __future__ import annotations

import argparse

from fedoa.cli.common import add_config_args, load

EXAMPLE = """example:
  fedoa config                                  # what `fedoa run` uses, with each key's help
  fedoa config --config my.toml --set train.lr=1e-3 > resolved.toml
  fedoa config --keys                           # key, type, code default, value, help
  fedoa config --reference > docs/configuration.md   # the Markdown reference of every key
"""


def config(args: argparse.Namespace) -> int:
    from fedoa.config import config_to_toml, describe_keys

    if args.reference:
        from fedoa.config import config_reference

        print(config_reference(), end="")
        return 0
    cfg = load(args)
    if not args.keys:
        print(config_to_toml(cfg, help=not args.bare), end="")
        return 0
    for key, tp, default, value, text in describe_keys(cfg):
        mark = "" if value == default else f"  (code default {default!r})"
        print(f"{key} = {value!r}{mark}\n    {tp}: {text}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("config", help="print the resolved config a run would use (with each key's help)",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--keys", action="store_true", help="list every key with its type, code default, value and help")
    p.add_argument("--reference", action="store_true", help="the Markdown reference of every key (code defaults, "
                   "checks, help): docs/configuration.md")
    p.add_argument("--bare", action="store_true", help="TOML without the help comments")
    p.set_defaults(func=config)
