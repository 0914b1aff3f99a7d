"""The validated settings: one frozen pydantic model per config section, and :class:`Settings` for the file."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from shardsync.config.identity import current_user, derive_device_id, read_machine_id
from shardsync.config.values import (
    as_tuple,
    check_url,
    dsn_secrets,
    mask_dsn,
    parse_duration,
    parse_listen,
    parse_remainders,
)
from shardsync.sinks import KINDS as SINK_KINDS

__all__ = [
    "DEFAULT_ENTITY_TYPES",
    "ENVIRONMENTS",
    "MAX_DIVISOR",
    "PLACEHOLDERS",
    "SECTIONS",
    "CredentialsSettings",
    "LogSettings",
    "Settings",
    "SinkSettings",
    "StatusSettings",
    "SupervisorSettings",
    "SyncSettings",
    "TradovateSettings",
]

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

#: Values config/shardsync.toml ships as placeholders: `check-config` warns while a file still has them.
PLACEHOLDERS: dict[tuple[str, str], object] = {
    ("tradovate", "app_id"): "my-vendor-sync",
    ("tradovate", "cid"): 1234,
}

# Units for the bounds below: every numeric key has an upper bound, so an
# accepted value can never overflow a timer or an allocation in a worker.
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30

_ALL: Any = "all"  # the default of sync.remainders, resolved by its validator

SECTIONS = ("tradovate", "credentials", "sync", "supervisor", "sink", "log", "status")

_MODEL_CONFIG = ConfigDict(
    extra="forbid",
    frozen=True,
    strict=True,
    validate_default=True,
    allow_inf_nan=False,
)


class _Section(BaseModel):
    model_config = _MODEL_CONFIG

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        # A NUL byte cannot be part of a path, URL or name the OS or a server accepts.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain a NUL character")
        return value


class TradovateSettings(_Section):
    """Where and as whom to connect to Tradovate."""

    environment: Literal["demo", "live"] = "demo"
    rest_url: str = ""
    ws_url: str = ""
    app_id: str = Field(min_length=1)
    app_version: str = Field(default="1.0", min_length=1)
    cid: int = Field(gt=0, le=2**53)
    device_id: str = ""
    ca_file: str = ""
    handshake_timeout: float = Field(default=10.0, gt=0, le=MINUTE * 5)
    # The server sends "h" every 2.5 s when idle: 10 s is four missed beats.
    idle_timeout: float = Field(default=10.0, gt=0, le=HOUR)
    response_timeout: float = Field(default=30.0, gt=0, le=MINUTE * 10)
    max_message_bytes: int = Field(default=64 * MIB, ge=64 * KIB, le=GIB)
    snapshot_timeout: float = Field(default=MINUTE * 10, gt=0, le=DAY)
    max_snapshot_bytes: int = Field(default=4 * GIB, ge=MIB, le=64 * GIB)
    max_snapshot_entities: int = Field(default=10_000_000, ge=1, le=1_000_000_000)
    deletion_grace: float = Field(default=10.0, ge=0, le=HOUR)
    max_resync_delete_ratio: float = Field(default=0.5, gt=0, le=1.0)
    renew_before: float = Field(default=900.0, gt=0, le=DAY)
    captcha_backoff: float = Field(default=HOUR, gt=0, le=DAY)
    lockout_backoff: float = Field(default=HOUR, gt=0, le=DAY)
    quota_backoff: float = Field(default=MINUTE, gt=0, le=HOUR)

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
        return check_url(value, "https", "http")

    @field_validator("ws_url")
    @classmethod
    def _check_ws_url(cls, value: str) -> str:
        return check_url(value, "wss", "ws")

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
        return as_tuple(value)

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

    heartbeat_interval: float = Field(default=1.0, gt=0, le=MINUTE)
    heartbeat_timeout: float = Field(default=10.0, gt=0, le=HOUR)
    backoff_initial: float = Field(default=0.5, gt=0, le=HOUR)
    backoff_max: float = Field(default=60.0, gt=0, le=DAY)
    stable_after: float = Field(default=60.0, gt=0, le=DAY)
    intensity: int = Field(default=10, ge=1, le=10_000)
    period: float = Field(default=300.0, gt=0, le=7 * DAY)
    shutdown_timeout: float = Field(default=10.0, gt=0, le=HOUR)
    start_timeout: float = Field(default=60.0, gt=0, le=DAY)
    max_concurrent_connects: int = Field(default=2, ge=1, le=64)
    connect_spacing: float = Field(default=0.5, ge=0, le=MINUTE)

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

    kind: str = "sqlite"
    path: str = "./state"
    dsn: str = ""
    #: How long the change log keeps a change (seconds, or "7d", "12h", "30m"); 0 keeps everything.
    events_retention: float = Field(default=7 * DAY, ge=0, le=10 * 365 * DAY, strict=False)
    #: The oldest uncommitted change waits at most this long while frames keep coming.
    flush_interval: float = Field(default=0.05, gt=0, le=10.0)
    #: Changes per sink transaction at most.
    batch_max: int = Field(default=5000, ge=1, le=1_000_000)

    @field_validator("events_retention", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in SINK_KINDS:
            names = [repr(name) for name in SINK_KINDS]
            raise ValueError(f"must be one of {', '.join(names[:-1])} or {names[-1]}")
        return value

    @field_validator("path", "dsn")
    @classmethod
    def _check_target(cls, value: str, info: ValidationInfo) -> str:
        kind = SINK_KINDS.get(info.data.get("kind", ""))
        if kind is not None and kind.target == info.field_name and not value.strip():
            raise ValueError(f"required when sink.kind = {info.data['kind']!r}")
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
        parse_listen(value)
        return value.strip()

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` to bind, or ``None`` when the listener is off."""
        return parse_listen(self.listen)


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
            return {**{name: {} for name in SECTIONS}, **data}
        return data

    def masked(self) -> dict[str, Any]:
        """The effective settings as JSON-able data, every secret masked."""
        data = self.model_dump(mode="json")
        data["sink"]["dsn"] = mask_dsn(self.sink.dsn)
        return data

    def secrets(self) -> tuple[str, ...]:
        """Secret strings found in the settings (for log redaction)."""
        return tuple(dsn_secrets(self.sink.dsn))
