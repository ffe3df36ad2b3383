"""Federated methods: each module defines one method behind :class:`fedoa.algorithms.base.Algorithm`."""
from fedoa.algorithms import (  # noqa: F401  (each module registers its method)
    centralized,
    ditto,
    feddpa,
    fedit,
    fedoa,
    fedprox,
    fedsdr,
    local,
    pfedme,
)
from fedoa.algorithms.registry import ALGORITHMS, make_algorithm

__all__ = ["ALGORITHMS", "make_algorithm"]
