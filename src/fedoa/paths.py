"""Where fedoa keeps what it downloads or converts once (model cache, data archives)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$FEDOA_CACHE`` if set, else ``$XDG_CACHE_HOME/fedoa`` or ``~/.cache/fedoa``."""
    env = os.environ.get("FEDOA_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fedoa"
