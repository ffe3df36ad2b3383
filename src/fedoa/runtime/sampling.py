"""Which clients take part in a round (the same draw in every runtime)."""
from __future__ import annotations

import random

from fedoa.seeding import seed_text


def sample_clients(names: list[str], fraction: float, seed: int, round_: int) -> list[str]:
    """``max(1, int(fraction * n))`` clients, drawn from the sorted names with a per-round seed."""
    pool = sorted(names)
    k = max(1, int(fraction * len(pool) + 1e-9))
    if k >= len(pool):
        return pool
    return sorted(random.Random(seed_text(seed, "sample", round_)).sample(pool, k))
