"""User-facing errors.

Anything the user can fix (a bad file, key, value or path) raises :class:`FedoaError`.
The CLI prints it as one line and exits with code 2; nothing already written is touched.
"""
from __future__ import annotations


class FedoaError(Exception):
    """An error caused by user input. ``where`` names the file, line or key at fault."""

    exit_code = 2

    def __init__(self, message: str, where: str | None = None):
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(FedoaError):
    """A config key is unknown, has the wrong type or an invalid value."""


class DataError(FedoaError):
    """A data file or record is malformed (names the file and line)."""


class ModelError(FedoaError):
    """A model could not be found or loaded."""


def warn(message: str) -> None:
    """One line on stderr about input that is used anyway (cut, repeated ...): never silent."""
    import sys

    print(f"fedoa: warning: {message}", file=sys.stderr, flush=True)
