"""Seeds derived from names, so every runtime draws the same numbers for the same work.

Python's ``hash`` is salted per process; sha256 of a text is not.
"""
from __future__ import annotations

import hashlib


def seed_text(*parts: object) -> str:
    return ":".join(str(p) for p in parts)


def derive_seed(*parts: object) -> int:
    digest = hashlib.sha256(seed_text(*parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
