"""Which clients take part in a round.

Without DP: ``max(1, int(fraction * n))`` clients drawn without replacement from a per-round seed
(the same draw in every runtime, so runs are reproducible). With DP (``poisson=True``): Poisson
sampling, each client independently with probability ``fraction``, from the OS's cryptographic
source: the sampling the accountant assumes (``PoissonSampledDpEvent(q)``), and a draw nobody can
replay from the run's seed (amplification by sampling needs the sample to be secret).
"""
from __future__ import annotations

import random
import secrets

from fedoa.seeding import seed_text


def sample_clients(names: list[str], fraction: float, seed: int, round_: int, poisson: bool = False) -> list[str]:
    """The round's clients, sorted (see the module's docstring for the two ways)."""
    pool = sorted(names)
    if poisson:
        if fraction >= 1.0:
            return pool
        draw = secrets.SystemRandom()
        return [n for n in pool if draw.random() < fraction]
    k = max(1, int(fraction * len(pool) + 1e-9))
    if k >= len(pool):
        return pool
    return sorted(random.Random(seed_text(seed, "sample", round_)).sample(pool, k))
