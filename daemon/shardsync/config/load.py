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
from shardsync.files import read_regular_file
from shardsync.ordinal import HostSlot, host_remainders

__all__ = ["MAX_CONFIG_BYTES", "load_config", "parse_settings", "render_settings", "too_deep"]


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


#: A config file is a few KiB; anything much larger is not one (and is not read into memory).
MAX_CONFIG_BYTES = 1 << 20
#: Tables and arrays nested deeper than this are refused before validation (no config needs 4).
MAX_NESTING = 16


def too_deep(data: object, limit: int) -> str | None:
    """The dotted path of the first value nested deeper than ``limit``, or None (iterative: no recursion)."""
    stack: list[tuple[object, int, str]] = [(data, 0, "")]
    while stack:
        value, depth, where = stack.pop()
        if depth > limit:
            return where or "(top level)"
        if isinstance(value, dict):
            stack += [(v, depth + 1, f"{where}.{k}" if where else str(k)) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, depth + 1, f"{where}[{i}]") for i, v in enumerate(value)]
    return None


def load_config(
    path: str | os.PathLike[str],
    *,
    host: HostSlot | None = None,
    machine_id: Callable[[], str] = read_machine_id,
    user: Callable[[], str] = current_user,
) -> Settings:
    """Read and validate a TOML config file; raise :class:`ConfigError` on any problem, never anything else.

    With ``host``, ``[sync] remainders`` (which must then be ``"all"`` or absent)
    becomes this host's block of ``0 .. divisor-1`` (:mod:`shardsync.ordinal`).
    """
    try:
        raw = read_regular_file(path, MAX_CONFIG_BYTES)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(path, [f"cannot read config file: {reason}"]) from None
    except ValueError as exc:
        raise ConfigError(path, [f"cannot read config file: {exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"not valid UTF-8 (byte {exc.start})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [toml_error(exc)]) from None
    except RecursionError:
        raise ConfigError(path, [f"TOML nesting too deep (at most {MAX_NESTING} levels)"]) from None
    where = too_deep(data, MAX_NESTING)
    if where is not None:
        raise ConfigError(path, [f"{where}: nested too deeply (at most {MAX_NESTING} levels)"])
    settings = parse_settings(data, source=path, machine_id=machine_id, user=user)
    return settings if host is None else _for_host(settings, data, host, path)


def _for_host(settings: Settings, data: Mapping[str, Any], host: HostSlot, path: str | os.PathLike[str]) -> Settings:
    """``settings`` running only ``host``'s remainders; ConfigError when the file picks remainders itself."""
    sync = data.get("sync")
    chosen = sync.get("remainders", "all") if isinstance(sync, dict) else "all"
    if not (isinstance(chosen, str) and chosen.strip().lower() == "all"):
        # Two sources of truth for one host's shards would let them disagree silently.
        raise ConfigError(path, [
            f'sync.remainders: must be "all" (or absent) when {host} chooses this host\'s remainders'
            f" (it is {str(chosen)[:40]!r})"
        ])
    try:
        remainders = host_remainders(settings.sync.divisor, host.index, host.count)
    except ValueError as exc:
        raise ConfigError(path, [str(exc)]) from None
    return settings.model_copy(update={"sync": settings.sync.model_copy(update={"remainders": remainders})})


def render_settings(settings: Settings) -> str:
    """The effective settings, secrets masked, as indented JSON (check-config)."""
    return orjson.dumps(settings.masked(), option=orjson.OPT_INDENT_2).decode()
