"""The one record type every loader produces, and the client split it lives in."""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

from fedoa.errors import DataError

SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def canonical(text: str) -> str:
    """An answer or option as fedoa trains and scores it: Unicode NFC, no surrounding whitespace (so an
    answer that differs from its option only by those is the same text for training and scoring)."""
    return unicodedata.normalize("NFC", text).strip()


def check_names(names: Iterable[str], what: str, where: str) -> None:
    """Names that become file and folder names (tasks, clients): safe path components (letters,
    digits, ``.``, ``_``, ``-``; not ``.``/``..``) that stay distinct when case is ignored (they
    would share one file on macOS and Windows)."""
    seen: dict[str, str] = {}
    for name in names:
        if not SAFE_NAME.match(name) or name in (".", ".."):
            raise DataError(f"{what} name {name!r} is not a safe file name (use letters, digits, '.', '_', '-')",
                            where=where)
        other = seen.setdefault(name.lower(), name)
        if other != name:
            raise DataError(f"{what} names {other!r} and {name!r} differ only by case (one file on "
                            "case-insensitive file systems)", where=where)

OPTIONS_MARKER = "OPTIONS:"


@dataclass(frozen=True)
class Record:
    """One instruction-following example.

    ``options`` are the admissible answers (empty for free-form tasks); when present, ``output``
    is one of them, so accuracy can be computed by scoring options or by exact match.
    """

    instruction: str
    output: str
    options: tuple[str, ...] = ()
    task: str = ""
    category: str = ""


@dataclass
class ClientData:
    """What one client holds: its name, its train and test records."""

    name: str
    train: list[Record] = field(default_factory=list)
    test: list[Record] = field(default_factory=list)

    @property
    def categories(self) -> set[str]:
        return {r.category for r in self.train + self.test}

    @property
    def tasks(self) -> set[str]:
        return {r.task for r in self.train + self.test}


def parse_options(instruction: str) -> tuple[str, ...]:
    """Options listed after the last ``OPTIONS:`` line, one per line, each prefixed by ``- ``.

    Returns ``()`` when the instruction has no options block. The block ends at the first line
    that is not an option (blank lines before the first option are skipped).
    """
    idx = instruction.rfind(OPTIONS_MARKER)
    if idx < 0:
        return ()
    options: list[str] = []
    for line in instruction[idx + len(OPTIONS_MARKER):].splitlines():
        stripped = line.strip()
        if stripped.startswith("- "):
            options.append(stripped[2:].strip())
        elif stripped == "-":
            options.append("")
        elif stripped == "" and not options:
            continue
        else:
            break
    return tuple(options)


def make_record(
    instruction: str,
    output: str,
    task: str = "",
    category: str = "",
    options: tuple[str, ...] | None = None,
    where: str | None = None,
) -> Record:
    """Build a validated record; ``where`` ("file:line") goes into the error message."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise DataError("field 'instruction' is empty or not a string", where=where)
    if not isinstance(output, str) or not output.strip():
        raise DataError("field 'output' is empty or not a string", where=where)
    if options is None:
        options = parse_options(instruction)
    options = tuple(dict.fromkeys(canonical(o) for o in options))  # repeated options: one
    if options and (len(options) < 2 or "" in options):
        raise DataError(f"degenerate options {list(options)}: a record with options needs at least two distinct, "
                        "non-empty ones", where=where)
    if options:
        output = canonical(output)
        if output not in options:
            raise DataError(f"output {output!r} is not among the options {list(options)}", where=where)
    return Record(instruction, output, options, task, category)
