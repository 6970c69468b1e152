"""A command line derived from a frozen dataclass: one ``--flag`` per field, presets, checks.

A recipe's config is a dataclass whose fields carry their help text (:func:`option`);
:func:`parser_for` turns its presets into an ``argparse`` parser and :func:`parse_with` applies
the flags given on top of the chosen preset. :func:`check_fields` checks what the annotations
say (a ``Literal``'s choices, finite numbers); :class:`ConfigError` names the flag to change.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any, Literal


class ConfigError(ValueError):
    """A setting that cannot work; the message says which flag to change."""


def option(default: Any, help: str) -> Any:
    """A dataclass field with its command-line help."""
    return dataclasses.field(default=default, metadata={"help": help})


def flag(name: str) -> str:
    """The command-line flag of a field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def check_fields(config: Any) -> str | None:
    """Any recipe's dataclass config: choices among the allowed ones and finite numbers."""
    hints = typing.get_type_hints(type(config))
    for spec in dataclasses.fields(config):
        choices = typing.get_args(hints[spec.name])
        value = getattr(config, spec.name)
        if typing.get_origin(hints[spec.name]) is Literal and value not in choices:
            return f"{flag(spec.name)} {value!r} is not one of {list(choices)}"
        numbers = value if isinstance(value, tuple) else (value,)
        if any(isinstance(number, float) and not math.isfinite(number) for number in numbers):
            return f"{flag(spec.name)} must be finite, got {value}"
    return None


def _argument_type(hint: Any) -> tuple[Any, dict[str, Any]]:
    """argparse ``type`` and extra keywords for one annotated field."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # `X | None`
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]

        def optional(text: str) -> Any:
            return None if text.lower() == "none" else inner(text)

        optional.__name__ = inner.__name__
        return optional, {}
    if typing.get_origin(hint) is Literal:
        return str, {"choices": list(typing.get_args(hint))}
    if typing.get_origin(hint) is tuple:
        item_types = typing.get_args(hint)
        return item_types[0], {"nargs": len(item_types), "metavar": ("MIN", "MAX")}
    if hint is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    return hint, {}


def parser_for(presets: dict[str, Any], description: str) -> argparse.ArgumentParser:
    """One ``--flag`` per field of the presets' dataclass (each field's ``help`` metadata, the
    paper preset's value) and ``--preset``; unset flags keep the preset's value."""
    parser = argparse.ArgumentParser(description=description,
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--preset", choices=sorted(presets), default="paper",
                        help="starting values: paper (the paper's settings) or demo (laptop CPU)")
    paper = presets["paper"]
    hints = typing.get_type_hints(type(paper))
    for spec in dataclasses.fields(paper):
        arg_type, extra = _argument_type(hints[spec.name])
        if arg_type is not None:
            extra["type"] = arg_type
        parser.add_argument(flag(spec.name), dest=spec.name,
                            help=f"{spec.metadata['help']} (paper: {getattr(paper, spec.name)})",
                            **extra)
    return parser


def parse_with(parser: argparse.ArgumentParser, presets: dict[str, Any],
               argv: list[str] | None = None) -> Any:
    """The preset named by ``--preset`` with every other flag ``parser`` read applied on top."""
    overrides = vars(parser.parse_args(argv))
    preset = presets[overrides.pop("preset")]
    overrides = {name: tuple(value) if isinstance(value, list) else value
                 for name, value in overrides.items()}
    return dataclasses.replace(preset, **overrides)


def from_dict(config_type: type, data: dict[str, Any]) -> Any:
    """A ``config_type`` from its JSON / checkpoint dictionary form (unknown names left out,
    lists back to tuples)."""
    known = {spec.name for spec in dataclasses.fields(config_type)}
    return config_type(**{name: tuple(value) if isinstance(value, list) else value
                          for name, value in data.items() if name in known})
