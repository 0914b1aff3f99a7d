"""Reading a config file: bytes -> TOML -> :class:`Settings`, or a :class:`ConfigError` naming every problem."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from pydantic import ValidationError

from shardsync.config.errors import ConfigError, toml_error, validation_lines
from shardsync.config.identity import current_user, read_machine_id
from shardsync.config.models import Settings

__all__ = ["load_config", "parse_settings", "render_settings"]


def parse_settings(
    data: Mapping[str, Any],
    *,
    source: str | os.PathLike[str] = "<config>",
    machine_id: Callable[[], str] = read_machine_id,
    user: Callable[[], str] = current_user,
) -> Settings:
    """Validate a parsed TOML mapping; raise :class:`ConfigError` with every problem."""
    try:
        return Settings.model_validate(data, context={"machine_id": machine_id, "user": user})
    except ValidationError as exc:
        raise ConfigError(source, validation_lines(exc)) from None


def load_config(
    path: str | os.PathLike[str],
    *,
    machine_id: Callable[[], str] = read_machine_id,
    user: Callable[[], str] = current_user,
) -> Settings:
    """Read and validate a TOML config file; raise :class:`ConfigError` on any problem."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(path, [f"cannot read config file: {reason}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"not valid UTF-8 (byte {exc.start})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [toml_error(exc)]) from None
    return parse_settings(data, source=path, machine_id=machine_id, user=user)


def render_settings(settings: Settings) -> str:
    """The effective settings, secrets masked, as indented JSON (check-config)."""
    return orjson.dumps(settings.masked(), option=orjson.OPT_INDENT_2).decode()
