"""Config files from a hostile or careless world: never a hang, never a traceback, every value bounded."""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

import annotated_types
import pytest

from shardsync.config import ConfigError, Settings, load_config, mask_dsn, parse_settings
from shardsync.config.values import dsn_secrets, parse_duration

MINIMAL = '[tradovate]\napp_id = "a"\ncid = 1\n'


def _load(path: Path) -> Settings:
    return load_config(path, machine_id=lambda: "m", user=lambda: "u")


def _errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(path)
    return info.value.errors


def test_fifo_config_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO in place of the config file is refused without waiting for a writer (SIGHUP must not freeze)."""
    fifo = tmp_path / "c.toml"
    os.mkfifo(fifo)
    assert _errors(fifo) == ["cannot read config file: not a regular file"]


def test_directory_and_huge_files_are_refused(tmp_path: Path) -> None:
    """A directory, and a file over 1 MiB, are refused with the reason."""
    assert _errors(tmp_path) == ["cannot read config file: not a regular file"]
    big = tmp_path / "big.toml"
    big.write_text(MINIMAL + "#" * (1 << 20) + "\n")
    assert _errors(big)[0].startswith("cannot read config file: too large")


@pytest.mark.parametrize("text", [
    "x = " + "[" * 3000 + "]" * 3000 + "\n",
    "x = " + "[" * 40 + "]" * 40 + "\n",
    "x = " + "{a = " * 40 + "1" + "}" * 40 + "\n",
])
def test_deep_nesting_is_a_clean_error(tmp_path: Path, text: str) -> None:
    """Arrays or inline tables nested deeper than 16 levels give one clean error, never RecursionError."""
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL + text)
    [error] = _errors(path)
    assert "nest" in error and "16" in error


def test_nul_in_a_string_is_refused() -> None:
    """A NUL character in sink.path (or any string) is an error naming the key."""
    with pytest.raises(ConfigError) as info:
        parse_settings({"tradovate": {"app_id": "a", "cid": 1}, "sink": {"path": "/var/lib/x\x00y"}})
    assert info.value.errors == ["sink.path: must not contain a NUL character"]


def _numeric_fields() -> list[tuple[str, str, Any]]:
    out = []
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        for name, info in model.model_fields.items():  # type: ignore[attr-defined]
            if info.annotation in (int, float):
                out.append((section, name, info))
    return out


def test_every_numeric_key_has_an_upper_bound() -> None:
    """No number in the config is unbounded: 1e300 can never reach a timer or an allocation."""
    unbounded = [f"{section}.{name}" for section, name, info in _numeric_fields()
                 if not any(isinstance(m, annotated_types.Le | annotated_types.Lt) for m in info.metadata)]
    assert not unbounded, unbounded
    assert len(_numeric_fields()) >= 25


@pytest.mark.parametrize(("section", "name"), [(s, n) for s, n, _ in _numeric_fields()])
def test_extreme_numbers_are_refused_by_name(section: str, name: str) -> None:
    """1e300 in any numeric key is refused with an error naming that key."""
    data: dict[str, Any] = {"tradovate": {"app_id": "a", "cid": 1}}
    data.setdefault(section, {})[name] = 10**300 if typing.get_type_hints(
        Settings.model_fields[section].annotation)[name] is int else 1e300
    with pytest.raises(ConfigError) as info:
        parse_settings(data)
    assert any(line.startswith(f"{section}.{name}: must be at most") for line in info.value.errors), info.value.errors


@pytest.mark.parametrize("key", ["ws_url", "rest_url"])
def test_userinfo_in_urls_is_refused(key: str) -> None:
    """A URL carrying user:password@ is refused (credentials come only from [credentials])."""
    url = {"ws_url": "wss://bob:hunter2@demo.example/v1/websocket", "rest_url": "https://bob:hunter2@demo.example/v1"}
    with pytest.raises(ConfigError) as info:
        parse_settings({"tradovate": {"app_id": "a", "cid": 1, key: url[key]}})
    assert "hunter2" not in str(info.value)
    assert f"tradovate.{key}: must not contain credentials" in str(info.value)


@pytest.mark.parametrize(("dsn", "masked", "secret"), [
    (r"host=db password=a\ b dbname=x", "host=db password=*** dbname=x", "a b"),
    ("host=db password=a&b dbname=x", "host=db password=*** dbname=x", "a&b"),
    (r"host=db password='it\'s s3cret' dbname=x", "host=db password=*** dbname=x", "it's s3cret"),
    ("host=db password = spaced-pw dbname=x", "host=db password = *** dbname=x", "spaced-pw"),
    ("postgresql://u:p%40ss@db:5432/x", "postgresql://u:***@db:5432/x", "p@ss"),
    ("postgresql://u:p@ss@db/x?sslpassword=key-pw&user=u", "postgresql://u:***@db/x?sslpassword=***&user=u", "key-pw"),
    ("postgres://db/x?password=q-pw", "postgres://db/x?password=***", "q-pw"),
])
def test_every_password_form_in_a_dsn_is_masked(dsn: str, masked: str, secret: str) -> None:
    """Keyword form with escapes and quotes, URL userinfo and query parameters: nothing of the password shows."""
    assert mask_dsn(dsn) == masked
    assert secret in dsn_secrets(dsn)


@pytest.mark.parametrize(("value", "seconds"), [(0, 0.0), (3600, 3600.0), ("7d", 604800.0), ("12h", 43200.0),
                                                ("30m", 1800.0), ("45s", 45.0), ("1.5h", 5400.0)])
def test_durations(value: object, seconds: float) -> None:
    """events_retention takes seconds or a number with a unit."""
    assert parse_duration(value) == seconds
    settings = parse_settings({"tradovate": {"app_id": "a", "cid": 1}, "sink": {"events_retention": value}})
    assert settings.sink.events_retention == seconds


def test_bad_duration_names_the_key() -> None:
    """A duration that is not one names sink.events_retention."""
    with pytest.raises(ConfigError) as info:
        parse_settings({"tradovate": {"app_id": "a", "cid": 1}, "sink": {"events_retention": "a week"}})
    assert info.value.errors[0].startswith("sink.events_retention: 'a week' is not a duration")
