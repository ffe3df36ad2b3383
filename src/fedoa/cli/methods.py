"""``fedoa methods``: the registered methods."""
from __future__ import annotations

import sys


def methods(args) -> int:
    from fedoa.registry import ALGORITHMS, SETTINGS, discover

    discover()
    for name, cls in sorted(ALGORITHMS.items()):
        doc = (sys.modules[cls.__module__].__doc__ or cls.__doc__ or "").strip().splitlines()
        section = f"[{name}]" if name in SETTINGS else ""
        print(f"{name:12s} {section:10s} {doc[0] if doc else ''}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("methods", help="list the available methods (and their config sections)")
    p.set_defaults(func=methods)
