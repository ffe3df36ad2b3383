"""Method name -> (algorithm class, settings class), filled by each method module as it is imported.

A method registers its algorithm and its settings together (as PEFT registers a tuner's config
and model). This module imports nothing from fedoa, and nothing here imports the methods:
``config`` looks settings up by name at load time, and the table of method modules in
:mod:`fedoa.algorithms` is imported once by the package itself (``fedoa/__init__.py``), so the
registry is full before any config is built and no module imports upward.
"""
from __future__ import annotations

from collections.abc import Callable

ALGORITHMS: dict[str, type] = {}
SETTINGS: dict[str, type] = {}


def register(settings: type | None = None) -> Callable[[type], type]:
    """Class decorator: ``@register(FedOASettings)`` (or ``@register()`` for a method without
    settings). The settings live in the config section named like the method."""

    def add(cls: type) -> type:
        if not getattr(cls, "name", ""):
            raise ValueError(f"{cls.__name__} has no name")
        ALGORITHMS[cls.name] = cls
        if settings is not None:
            SETTINGS[cls.name] = settings
        return cls

    return add
