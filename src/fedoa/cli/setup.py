"""``fedoa setup``: one-time set-up of the embedded model and data."""
from __future__ import annotations


def setup(args) -> int:
    from fedoa.data.vader import ensure_vader_files
    from fedoa.model.base import ensure_embedded_model

    print(f"embedded model: {ensure_embedded_model()}")
    print(f"embedded data:  {ensure_vader_files()}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("setup", help="convert the embedded model and fetch the embedded data (once)")
    p.set_defaults(func=setup)
