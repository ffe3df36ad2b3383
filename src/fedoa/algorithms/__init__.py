"""Federated methods: each module defines one method behind :class:`fedoa.algorithms.base.Algorithm`."""
from fedoa.algorithms import fedoa  # noqa: F401  (registers)
from fedoa.algorithms.registry import ALGORITHMS, make_algorithm

__all__ = ["ALGORITHMS", "make_algorithm"]
