"""Federated methods: each module defines one method (its settings and its algorithm, registered
together in :mod:`fedoa.registry`) behind :class:`fedoa.algorithms.base.Algorithm`."""
from fedoa.algorithms import (  # noqa: F401  (each module registers its method)
    centralized,
    ditto,
    feddpa,
    fedit,
    fedlora,
    fedoa,
    fedprox,
    fedsdr,
    local,
    perada,
    pfedme,
)
from fedoa.registry import ALGORITHMS


def make_algorithm(cfg):
    """The algorithm of ``cfg.method`` (the config has already checked that it exists)."""
    return ALGORITHMS[cfg.method](cfg)


__all__ = ["ALGORITHMS", "make_algorithm"]
