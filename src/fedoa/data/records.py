"""The one record type every loader produces, and the client split it lives in."""
from __future__ import annotations

from dataclasses import dataclass, field

from fedoa.errors import DataError

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
    options = tuple(options)
    if options and output.strip() not in {o.strip() for o in options}:
        raise DataError(f"output {output!r} is not among the options {list(options)}", where=where)
    return Record(instruction, output, options, task, category)
