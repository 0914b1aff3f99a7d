"""TOML -> frozen, validated settings; every error names the file and the key.

The package, one job per module:

- ``models``: the pydantic sections and :class:`Settings` (defaults, bounds, cross-field rules);
- ``values``: pure parsers and checks of single values (URLs, remainders, listen addresses, DSN masking);
- ``identity``: the machine id and OS user behind the derived ``device_id``;
- ``errors``: :class:`ConfigError` and the translation of pydantic/tomllib errors into
  ``FILE: dotted.key: message`` lines;
- ``load``: :func:`load_config` (file -> settings, every problem at once), :func:`parse_settings`
  (the pure half: a parsed mapping in; the machine identity injected) and :func:`render_settings`
  (``shardsync check-config``: the effective settings, secrets masked).

Secret masking: ``sink.dsn`` is the only secret-bearing key. Its password parts (URL userinfo password,
``password=``/``sslpassword=`` keywords or query parameters) are replaced by ``***``; host, port, database
and user stay visible so the operator can check where the sink points.
"""

from __future__ import annotations

from shardsync.config.errors import ConfigError
from shardsync.config.identity import current_user, derive_device_id, read_machine_id
from shardsync.config.load import load_config, parse_settings, render_settings
from shardsync.config.models import (
    CredentialsSettings,
    LogSettings,
    Settings,
    SinkSettings,
    StatusSettings,
    SupervisorSettings,
    SyncSettings,
    TradovateSettings,
)
from shardsync.config.values import mask_dsn, parse_remainders

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
