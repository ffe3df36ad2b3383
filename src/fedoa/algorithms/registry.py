"""Name -> method class. A method module registers itself with ``@register``."""
from __future__ import annotations

from fedoa.errors import ConfigError

ALGORITHMS: dict[str, type] = {}


def register(cls: type) -> type:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    ALGORITHMS[cls.name] = cls
    return cls


def make_algorithm(cfg):
    import fedoa.algorithms  # noqa: F401  (imports every method module, which registers it)

    try:
        cls = ALGORITHMS[cfg.method]
    except KeyError:
        raise ConfigError(
            f"unknown method {cfg.method!r}; known: {', '.join(sorted(ALGORITHMS))}", where="method"
        ) from None
    return cls(cfg)
