"""TOML -> frozen, validated settings; every error names the file and the key.

The public surface:

- :func:`load_config` reads a file and returns :class:`Settings` or raises
  :class:`ConfigError` carrying *every* problem at once, one line each, as
  ``FILE: dotted.key: message``.
- :func:`parse_settings` is the pure half: a parsed TOML mapping in, settings
  out (the machine identity used for the derived ``device_id`` is injected).
- :meth:`Settings.masked` / :func:`render_settings` show the effective
  settings with secrets masked (``shardsync check-config``).

Secret masking: ``sink.dsn`` is the only secret-bearing key. Its password
parts (URL userinfo password, ``password=``/``sslpassword=`` keywords or query
parameters) are replaced by ``***``; host, port, database and user stay
visible so the operator can check where the sink points.
"""

from __future__ import annotations

import getpass
import hashlib
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "ConfigError",
    "CredentialsSettings",
    "LogSettings",
    "Settings",
    "SinkSettings",
    "StatusSettings",
    "SupervisorSettings",
    "SyncSettings",
    "TradovateSettings",
    "current_user",
    "derive_device_id",
    "load_config",
    "mask_dsn",
    "parse_remainders",
    "parse_settings",
    "read_machine_id",
    "render_settings",
]

MASK = "***"

ENVIRONMENTS: dict[str, tuple[str, str]] = {
    "demo": ("https://demo.tradovateapi.com/v1", "wss://demo.tradovateapi.com/v1/websocket"),
    "live": ("https://live.tradovateapi.com/v1", "wss://live.tradovateapi.com/v1/websocket"),
}

DEFAULT_ENTITY_TYPES = (
    "user",
    "account",
    "accountRiskStatus",
    "cashBalance",
    "position",
    "order",
    "fill",
)

MAX_DIVISOR = 65536

_ALL: Any = "all"  # the default of sync.remainders, resolved by its validator

_SECTIONS = ("tradovate", "credentials", "sync", "supervisor", "sink", "log", "status")


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


# --------------------------------------------------------------------------
# machine identity (device_id)


def read_machine_id() -> str:
    """The machine id (systemd, then D-Bus), or the host name as a last resort."""
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(candidate, encoding="ascii", errors="replace") as f:
                value = f.read().strip()
        except OSError:
            continue
        if value:
            return value
    return socket.gethostname()


def current_user() -> str:
    """The OS user name of this process (numeric uid if it has no name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.geteuid())


def derive_device_id(machine_id: str, user: str) -> str:
    """A stable 32-hex-digit device id from the machine id and the OS user."""
    digest = hashlib.sha256(f"shardsync\0{machine_id}\0{user}".encode()).hexdigest()
    return digest[:32]


# --------------------------------------------------------------------------
# small pure helpers


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(value: str, secure: str, plain: str) -> str:
    if not value:
        return value  # only when environment is invalid: that error is reported
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in (secure, plain):
        raise ValueError(f"must start with {secure}:// or {plain}://")
    if not parts.hostname:
        raise ValueError("has no host")
    if parts.scheme == plain and not _is_loopback(parts.hostname):
        raise ValueError(f"{plain}:// (unencrypted) is only allowed to a loopback host; use {secure}://")
    return value


_RANGE_RE = re.compile(r"^(\d+)(?:\s*-\s*(\d+))?$")


def parse_remainders(value: object, divisor: int | None) -> tuple[int, ...]:
    """Resolve ``"all"``, a list of ints or ``"0-7,12"`` to a sorted tuple.

    With ``divisor=None`` (the divisor itself is invalid) only the syntax is
    checked and an empty tuple is returned.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "all":
            if divisor is None:
                return ()
            return tuple(range(divisor))
        if not text:
            raise ValueError('empty selection; use "all", a list or ranges like "0-7,12"')
        spans: list[tuple[int, int]] = []
        for raw_item in text.split(","):
            item = raw_item.strip()
            m = _RANGE_RE.match(item)
            if m is None:
                raise ValueError(f"{item!r} is not a remainder or a range like 0-7")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if lo > hi:
                raise ValueError(f"bad range {item!r}: start > end")
            spans.append((lo, hi))
    elif isinstance(value, (list, tuple)):
        spans = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, int):
                raise ValueError(f"item {i} is not an integer")
            if item < 0:
                raise ValueError(f"remainder {item} < 0")
            spans.append((item, item))
    else:
        raise ValueError('expected "all", an array of integers or a string like "0-7,12"')

    if not spans:
        raise ValueError("empty selection")
    if divisor is None:
        return ()
    for _lo, hi in spans:
        if hi >= divisor:
            raise ValueError(f"remainder {hi} >= divisor {divisor}")
    seen: set[int] = set()
    for lo, hi in spans:
        for r in range(lo, hi + 1):
            if r in seen:
                raise ValueError(f"remainder {r} listed twice")
            seen.add(r)
    return tuple(sorted(seen))


def _parse_listen(value: str) -> tuple[str, int] | None:
    value = value.strip()
    if not value:
        return None
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError('expected "[IPv6]:port", e.g. "[::1]:9464"')
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError('expected "host:port", e.g. "127.0.0.1:9464", or "" for off')
        if ":" in host:
            raise ValueError('an IPv6 address needs brackets: "[::1]:9464"')
    if not host:
        raise ValueError('missing host; e.g. "0.0.0.0:9464" for every interface')
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not a number in 0-65535")
    return host, int(port)


_DSN_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*):.*@", re.DOTALL)
_DSN_KW_RE = re.compile(r"""(?i)\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)""")


def mask_dsn(dsn: str) -> str:
    """The DSN with every password part replaced by ``***``."""
    if not dsn:
        return dsn
    masked = _DSN_URL_RE.sub(lambda m: f"{m.group(1)}:{MASK}@", dsn, count=1)
    return _DSN_KW_RE.sub(lambda m: f"{m.group(1)}{MASK}", masked)


def _dsn_secrets(dsn: str) -> list[str]:
    found: list[str] = []
    m = _DSN_URL_RE.match(dsn)
    if m:
        found.append(dsn[len(m.group(1)) + 1 : m.end() - 1])
    for km in _DSN_KW_RE.finditer(dsn):
        found.append(km.group(2).strip("'"))
    return [s for s in found if s]


def _as_tuple(value: object) -> object:
    """TOML arrays arrive as lists; the frozen models store tuples."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, tuple):
        return value
    raise ValueError("expected an array")


# --------------------------------------------------------------------------
# models

_MODEL_CONFIG = ConfigDict(
    extra="forbid",
    frozen=True,
    strict=True,
    validate_default=True,
    allow_inf_nan=False,
)


class _Section(BaseModel):
    model_config = _MODEL_CONFIG


class TradovateSettings(_Section):
    """Where and as whom to connect to Tradovate."""

    environment: Literal["demo", "live"] = "demo"
    rest_url: str = ""
    ws_url: str = ""
    app_id: str = Field(min_length=1)
    app_version: str = Field(default="1.0", min_length=1)
    cid: int = Field(gt=0)
    device_id: str = ""
    ca_file: str = ""
    handshake_timeout: float = Field(default=10.0, gt=0)
    idle_timeout: float = Field(default=30.0, gt=0)
    renew_before: float = Field(default=900.0, gt=0)
    captcha_backoff: float = Field(default=3600.0, gt=0)
    lockout_backoff: float = Field(default=3600.0, gt=0)

    @field_validator("rest_url", mode="before")
    @classmethod
    def _default_rest_url(cls, value: object, info: ValidationInfo) -> object:
        if value == "" and info.data.get("environment") in ENVIRONMENTS:
            return ENVIRONMENTS[info.data["environment"]][0]
        return value

    @field_validator("ws_url", mode="before")
    @classmethod
    def _default_ws_url(cls, value: object, info: ValidationInfo) -> object:
        if value == "" and info.data.get("environment") in ENVIRONMENTS:
            return ENVIRONMENTS[info.data["environment"]][1]
        return value

    @field_validator("rest_url")
    @classmethod
    def _check_rest_url(cls, value: str) -> str:
        return _check_url(value, "https", "http")

    @field_validator("ws_url")
    @classmethod
    def _check_ws_url(cls, value: str) -> str:
        return _check_url(value, "wss", "ws")

    @field_validator("device_id")
    @classmethod
    def _resolve_device_id(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if value:
            return value
        ctx = info.context if isinstance(info.context, Mapping) else {}
        machine_id: Callable[[], str] = ctx.get("machine_id", read_machine_id)
        user: Callable[[], str] = ctx.get("user", current_user)
        return derive_device_id(machine_id(), user())

    @field_validator("ca_file")
    @classmethod
    def _check_ca_file(cls, value: str) -> str:
        if value and not (os.path.isfile(value) and os.access(value, os.R_OK)):
            raise ValueError(f"{value!r} does not exist or is not a readable file")
        return value


class CredentialsSettings(_Section):
    """Where the login secrets come from (the secrets themselves are never here)."""

    file: str = ""


class SyncSettings(_Section):
    """Which shards this host runs and what each subscribes to."""

    divisor: int = Field(default=1, ge=1, le=MAX_DIVISOR)
    remainders: tuple[int, ...] = Field(default=_ALL, strict=False)
    expression: Literal["modAccountId", "modUserId"] = "modAccountId"
    entity_types: tuple[str, ...] = Field(default=DEFAULT_ENTITY_TYPES, strict=False)
    split_responses: bool = True

    @field_validator("remainders", mode="before")
    @classmethod
    def _resolve_remainders(cls, value: object, info: ValidationInfo) -> tuple[int, ...]:
        divisor = info.data.get("divisor")
        return parse_remainders(value, divisor if isinstance(divisor, int) else None)

    @field_validator("entity_types", mode="before")
    @classmethod
    def _entity_types_tuple(cls, value: object) -> object:
        return _as_tuple(value)

    @field_validator("entity_types")
    @classmethod
    def _check_entity_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one entity type")
        seen: set[str] = set()
        for name in value:
            if not name.strip():
                raise ValueError("empty entity type name")
            if name in seen:
                raise ValueError(f"{name!r} listed twice")
            seen.add(name)
        return value

    @property
    def resolved_remainders(self) -> tuple[int, ...]:
        """The remainders this host runs, sorted and unique."""
        return self.remainders


class SupervisorSettings(_Section):
    """Heartbeats, restart policy and connect pacing of the parent."""

    heartbeat_interval: float = Field(default=1.0, gt=0)
    heartbeat_timeout: float = Field(default=10.0, gt=0)
    backoff_initial: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=60.0, gt=0)
    stable_after: float = Field(default=60.0, gt=0)
    intensity: int = Field(default=10, ge=1)
    period: float = Field(default=300.0, gt=0)
    shutdown_timeout: float = Field(default=10.0, gt=0)
    start_timeout: float = Field(default=60.0, gt=0)
    max_concurrent_connects: int = Field(default=2, ge=1)
    connect_spacing: float = Field(default=0.5, ge=0)

    @field_validator("heartbeat_timeout")
    @classmethod
    def _timeout_above_interval(cls, value: float, info: ValidationInfo) -> float:
        interval = info.data.get("heartbeat_interval")
        if interval is not None and value <= interval:
            raise ValueError(f"must be greater than heartbeat_interval ({interval})")
        return value

    @field_validator("backoff_max")
    @classmethod
    def _max_above_initial(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("backoff_initial")
        if initial is not None and value < initial:
            raise ValueError(f"must be at least backoff_initial ({initial})")
        return value


class SinkSettings(_Section):
    """Where changes are written."""

    kind: Literal["sqlite", "jsonl", "postgres"] = "sqlite"
    path: str = "./state"
    dsn: str = ""

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("kind") in ("sqlite", "jsonl") and not value.strip():
            raise ValueError(f"required when sink.kind = {info.data['kind']!r}")
        return value

    @field_validator("dsn")
    @classmethod
    def _check_dsn(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("kind") == "postgres" and not value.strip():
            raise ValueError("required when sink.kind = 'postgres'")
        return value


class LogSettings(_Section):
    """Log format and level."""

    format: Literal["json", "console", "auto"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("format", "level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        value = value.strip().lower()
        return "warning" if value == "warn" else value


class StatusSettings(_Section):
    """The status/metrics HTTP listener."""

    listen: str = "127.0.0.1:9464"

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        _parse_listen(value)
        return value.strip()

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` to bind, or ``None`` when the listener is off."""
        return _parse_listen(self.listen)


class Settings(_Section):
    """The whole validated configuration."""

    tradovate: TradovateSettings
    credentials: CredentialsSettings
    sync: SyncSettings
    supervisor: SupervisorSettings
    sink: SinkSettings
    log: LogSettings
    status: StatusSettings

    @model_validator(mode="before")
    @classmethod
    def _missing_sections_default(cls, data: object) -> object:
        # An absent section means "all defaults", so its own required keys
        # are reported (tradovate.app_id: required) rather than "tradovate".
        if isinstance(data, Mapping):
            return {**{name: {} for name in _SECTIONS}, **data}
        return data

    def masked(self) -> dict[str, Any]:
        """The effective settings as JSON-able data, every secret masked."""
        data = self.model_dump(mode="json")
        data["sink"]["dsn"] = mask_dsn(self.sink.dsn)
        return data

    def secrets(self) -> tuple[str, ...]:
        """Secret strings found in the settings (for log redaction)."""
        return tuple(_dsn_secrets(self.sink.dsn))


# --------------------------------------------------------------------------
# errors


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


def _error_lines(exc: ValidationError) -> list[str]:
    return [
        f"{_dotted(tuple(err['loc']))}: {_message(err)}" for err in exc.errors(include_url=False, include_input=True)
    ]


# --------------------------------------------------------------------------
# entry points


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
        raise ConfigError(source, _error_lines(exc)) from None


_TOML_POS_RE = re.compile(r"^(.*?)\s*\(at line (\d+), column (\d+)\)\s*$", re.DOTALL)


def _toml_error(exc: tomllib.TOMLDecodeError) -> str:
    text = str(exc)
    m = _TOML_POS_RE.match(text)
    if m:
        return f"line {m.group(2)}, column {m.group(3)}: TOML syntax error: {m.group(1)}"
    return f"TOML syntax error: {text}"


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
        raise ConfigError(path, [_toml_error(exc)]) from None
    return parse_settings(data, source=path, machine_id=machine_id, user=user)


def render_settings(settings: Settings) -> str:
    """The effective settings, secrets masked, as indented JSON (check-config)."""
    return orjson.dumps(settings.masked(), option=orjson.OPT_INDENT_2).decode()
