"""``fedoa config``: the config a run would use, with every key's help; the Markdown reference.

The rendering of help texts lives here, beside the verb that prints it: the config module is
schema and loading only.
"""
from __future__ import annotations

import argparse
import textwrap
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fedoa.cli.common import add_config_args, load
from fedoa.config import RunConfig, toml_value, config_to_toml, default_config_path, load_config, top_level

EXAMPLE = """example:
  fedoa config                                  # what `fedoa run` uses, with each key's help
  fedoa config --config my.toml --set train.lr=1e-3 > resolved.toml
  fedoa config --keys                           # key, type, code default, value, help
  fedoa config --reference > docs/configuration.md   # the Markdown reference of every key
"""


def _wrap(text: str, width: int = 98) -> list[str]:
    return textwrap.wrap(text, width) or [""]


def annotated_toml(cfg: RunConfig) -> str:
    """The resolved config as TOML, every key preceded by its help text as a comment."""
    lines: list[str] = []

    def emit(model: BaseModel, values: dict[str, Any]) -> None:
        for key, value in values.items():
            lines.extend(f"# {line}" for line in _wrap(type(model).model_fields[key].description or ""))
            lines.append(f"{key} = {toml_value(value)}")

    emit(cfg, top_level(cfg))
    for name, section in cfg.sections().items():
        lines.append("")
        if section.__doc__:
            lines.extend(f"# {line}" for line in _wrap(section.__doc__.strip().splitlines()[0]))
        lines.append(f"[{name}]")
        emit(section, section.model_dump())
    return "\n".join(lines) + "\n"


def type_name(annotation: Any) -> str:
    """``int``, ``list[str]``, ``"a" | "b"`` (a Literal's choices): how a key's type reads in help."""
    if get_origin(annotation) is Literal:
        return " | ".join(toml_value(a) for a in get_args(annotation))
    if isinstance(annotation, type) and not get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "length >="))


def constraints(field: FieldInfo) -> str:
    """A field's checks in words: ``>= 1, < 1``, a pattern."""
    out = []
    for item in field.metadata:
        out += [f"{sign} {getattr(item, attr)}" for attr, sign in _BOUNDS if getattr(item, attr, None) is not None]
        if getattr(item, "pattern", None):
            out.append(f"matches `{item.pattern}`")
    return ", ".join(out)


def describe_keys(cfg: RunConfig) -> list[tuple[str, str, Any, Any, str]]:
    """``(key, type, code default, value in cfg, help)`` for every key."""
    out = []
    for name, section in cfg.sections().items():
        default = type(section)()
        for key, field in type(section).model_fields.items():
            out.append((f"{name}.{key}", type_name(field.annotation), getattr(default, key), getattr(section, key),
                        field.description or ""))
    for key in ("method", "seed"):
        field = RunConfig.model_fields[key]
        out.insert(0 if key == "method" else 1, (key, type_name(field.annotation), field.default, getattr(cfg, key),
                                                  field.description or ""))
    return out


REFERENCE_HEAD = """# Configuration reference

<!-- Generated from the settings classes by `fedoa config --reference > docs/configuration.md`;
     tests/test_docs.py checks that this file is current. Edit the help texts in the code. -->

Every key of a run, its type, code default and help. Set keys in a TOML file (`fedoa run --config
FILE`, one `[section]` per table below) or with `--set section.key=value` (values are TOML; bare
words are strings). `fedoa config` prints the resolved config with these help texts. Where the
embedded default preset (`src/fedoa/configs/default.toml`, used when no `--config` is given)
overrides a code default, its value follows the default.
"""


def config_reference() -> str:
    """Markdown: one table per section with every key's type, default, checks and help."""
    code, preset = RunConfig(), load_config(default_config_path())

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    def toml(v: Any) -> str:  # one line, as in a `--set` or an inline TOML value
        return "[" + ", ".join(toml_value(x) for x in v) + "]" if isinstance(v, list) else toml_value(v)

    def row(key: str, field: FieldInfo, default: Any, preset_value: Any) -> str:
        value = f"`{toml(default)}`"
        if preset_value != default:
            value += f" (preset `{toml(preset_value)}`)"
        checks = constraints(field)
        return "| " + " | ".join([f"`{key}`", cell(f"`{type_name(field.annotation)}`"), cell(value),
                                  cell((field.description or "") + (f" ({checks})" if checks else ""))]) + " |"

    head = ["| key | type | default | help |", "|---|---|---|---|"]
    parts = [REFERENCE_HEAD, "## Top level", "", *head]
    parts += [row(k, RunConfig.model_fields[k], getattr(code, k), getattr(preset, k)) for k in ("method", "seed")]
    for name, section in code.sections().items():
        doc = (type(section).__doc__ or "").strip().splitlines()[0]
        parts += ["", f"## [{name}]", "", doc, "", *head]
        parts += [row(k, f, getattr(section, k), getattr(preset.sections()[name], k))
                  for k, f in type(section).model_fields.items()]
    return "\n".join(parts) + "\n"


def config(args: argparse.Namespace) -> int:
    if args.reference:
        print(config_reference(), end="")
        return 0
    cfg = load(args)
    if not args.keys:
        print(config_to_toml(cfg) if args.bare else annotated_toml(cfg), end="")
        return 0
    for key, tp, default, value, text in describe_keys(cfg):
        mark = "" if value == default else f"  (code default {default!r})"
        print(f"{key} = {value!r}{mark}\n    {tp}: {text}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("config", help="print the resolved config a run would use (with each key's help)",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--keys", action="store_true", help="list every key with its type, code default, value and help")
    p.add_argument("--reference", action="store_true", help="the Markdown reference of every key (code defaults, "
                   "checks, help): docs/configuration.md")
    p.add_argument("--bare", action="store_true", help="TOML without the help comments")
    p.set_defaults(func=config)
