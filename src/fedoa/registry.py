"""Method name -> (algorithm class, settings class), filled by each method module as it is imported.

A method registers its algorithm and its settings together (as PEFT registers a tuner's config
and model). This module imports nothing from fedoa. The methods are plugins: :func:`discover`
imports the modules named by the ``fedoa.methods`` entry points once, when a config or a method
is first looked up. fedoa's own entry point is :mod:`fedoa.algorithms`, whose table lists the
built-in methods; another package adds its methods with an entry point of its own. So ``config``
finds method sections by name without importing the algorithms (which import ``config``), and
importing fedoa costs nothing until a method is needed.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points

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


GROUP = "fedoa.methods"
_discovered = False


def discover() -> None:
    """Import every module a ``fedoa.methods`` entry point names (each registers its methods)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        importlib.import_module(ep.value)
    if not ALGORITHMS:
        raise RuntimeError(f"no fedoa method found: is fedoa installed (pip install -e .)? No {GROUP!r} entry point "
                           "registered any")
