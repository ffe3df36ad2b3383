"""Method name -> (algorithm class, settings class), filled by each method module as it is imported.

A method registers its algorithm and its settings together (as PEFT registers a tuner's config
and model), so adding a method touches one module. This module imports nothing from fedoa:
``config`` looks settings up here by name at load time, without importing the algorithms
(which import ``config``).
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


def load_methods() -> None:
    """Import every method module (each registers itself)."""
    import fedoa.algorithms  # noqa: F401
