"""Turning pydantic's and tomllib's errors into one ``FILE: dotted.key: message`` line per problem."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

__all__ = ["ConfigError", "toml_error", "validation_lines"]


class ConfigError(Exception):
    """An invalid configuration; ``str()`` is one ``FILE: key: message`` line per problem."""

    def __init__(self, path: str | os.PathLike[str], errors: list[str]) -> None:
        self.path = os.fspath(path)
        #: each problem as ``dotted.key: message`` (or a file-level message)
        self.errors = list(errors)
        super().__init__(str(self))

    @property
    def lines(self) -> list[str]:
        """Every problem prefixed with the file name."""
        return [f"{self.path}: {e}" for e in self.errors]

    def __str__(self) -> str:
        return "\n".join(self.lines)


_TOML_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (tuple, "an array"),
    (dict, "a table"),
)


def _toml_type(value: object) -> str:
    for typ, name in _TOML_TYPES:
        if isinstance(value, typ):
            return name
    return "a date/time" if hasattr(value, "isoformat") else type(value).__name__


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "tuple_type": "an array",
    "list_type": "an array",
    "model_type": "a table",
    "dict_type": "a table",
    "model_attributes_type": "a table",
}


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _num(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _message(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_toml_type(err.get('input'))}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}"
    if kind == "greater_than":
        return f"must be greater than {_num(ctx.get('gt'))}"
    if kind == "greater_than_equal":
        return f"must be at least {_num(ctx.get('ge'))}"
    if kind == "less_than_equal":
        return f"must be at most {_num(ctx.get('le'))}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "value_error":
        msg = str(err.get("msg", ""))
        return msg.removeprefix("Value error, ")
    # never echo the input: it could be a secret
    return str(err.get("msg", kind))


def validation_lines(exc: ValidationError) -> list[str]:
    return [
        f"{_dotted(tuple(err['loc']))}: {_message(err)}" for err in exc.errors(include_url=False, include_input=True)
    ]


_TOML_POS_RE = re.compile(r"^(.*?)\s*\(at line (\d+), column (\d+)\)\s*$", re.DOTALL)


def toml_error(exc: tomllib.TOMLDecodeError) -> str:
    text = str(exc)
    m = _TOML_POS_RE.match(text)
    if m:
        return f"line {m.group(2)}, column {m.group(3)}: TOML syntax error: {m.group(1)}"
    return f"TOML syntax error: {text}"
