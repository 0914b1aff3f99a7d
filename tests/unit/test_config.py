"""Tests for shardsync.config: TOML -> frozen, validated settings."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest

from shardsync.config import (
    ConfigError,
    Settings,
    derive_device_id,
    load_config,
    parse_settings,
    render_settings,
)

REPO = Path(__file__).resolve().parents[2]
MINIMAL = '[tradovate]\napp_id = "a"\ncid = 1\n'


def _machine() -> str:
    return "machine-1"


def _user() -> str:
    return "svc"


def parse(data: dict[str, Any], **kw: Any) -> Settings:
    data = {"tradovate": {"app_id": "a", "cid": 1}, **data}
    kw.setdefault("machine_id", _machine)
    kw.setdefault("user", _user)
    return parse_settings(data, source="x.toml", **kw)


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data)
    return info.value.lines


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- defaults and URLs -------------------------------------------------------


def test_minimal_file_gets_every_default(tmp_path: Path) -> None:
    """A file with only the required keys loads with the documented defaults."""
    s = load_config(write(tmp_path, MINIMAL), machine_id=_machine, user=_user)
    assert s.tradovate.environment == "demo"
    assert s.tradovate.app_version == "1.0"
    assert s.tradovate.handshake_timeout == 10.0
    assert s.sync.divisor == 1
    assert s.sync.resolved_remainders == (0,)
    assert s.sync.expression == "modAccountId"
    assert s.sync.entity_types[0] == "user" and len(s.sync.entity_types) == 7
    assert s.supervisor.heartbeat_timeout == 10.0 and s.supervisor.intensity == 10
    assert (s.sink.kind, s.sink.path, s.sink.dsn) == ("sqlite", "./state", "")
    assert (s.log.format, s.log.level) == ("auto", "info")
    assert s.status.address == ("127.0.0.1", 9464)


def test_demo_environment_sets_both_urls() -> None:
    """environment = demo selects Tradovate's demo REST and WebSocket endpoints."""
    t = parse({}).tradovate
    assert t.rest_url == "https://demo.tradovateapi.com/v1"
    assert t.ws_url == "wss://demo.tradovateapi.com/v1/websocket"


def test_live_environment_sets_both_urls() -> None:
    """environment = live selects Tradovate's live REST and WebSocket endpoints."""
    t = parse({"tradovate": {"app_id": "a", "cid": 1, "environment": "live"}}).tradovate
    assert t.rest_url == "https://live.tradovateapi.com/v1"
    assert t.ws_url == "wss://live.tradovateapi.com/v1/websocket"


def test_explicit_urls_override_environment() -> None:
    """Explicit rest_url/ws_url win over the environment's URLs."""
    t = parse(
        {
            "tradovate": {
                "app_id": "a",
                "cid": 1,
                "environment": "live",
                "rest_url": "http://127.0.0.1:8765/v1",
                "ws_url": "ws://127.0.0.1:8765/v1/websocket",
            }
        }
    ).tradovate
    assert t.rest_url == "http://127.0.0.1:8765/v1"
    assert t.ws_url == "ws://127.0.0.1:8765/v1/websocket"


def test_settings_are_frozen() -> None:
    """Validated settings cannot be mutated after loading."""
    s = parse({})
    with pytest.raises(ValueError, match="frozen"):
        s.sync.divisor = 3


# --- unknown / missing / types -------------------------------------------------


def test_unknown_top_level_key() -> None:
    """An unknown section is reported as an unknown key."""
    assert errors_of({"synk": {}}) == ["x.toml: synk: unknown key"]


def test_unknown_nested_key() -> None:
    """A typo inside a section is reported with its dotted key."""
    assert errors_of({"sync": {"divsor": 4}}) == ["x.toml: sync.divsor: unknown key"]


def test_missing_required_keys() -> None:
    """app_id and cid are required, even when [tradovate] is absent."""
    with pytest.raises(ConfigError) as info:
        parse_settings({}, source="x.toml", machine_id=_machine, user=_user)
    assert info.value.lines == ["x.toml: tradovate.app_id: required", "x.toml: tradovate.cid: required"]


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("sync", "divisor", "4", "expected an integer, got a string"),
        ("sync", "divisor", 4.0, "expected an integer, got a float"),
        ("sync", "split_responses", 1, "expected true or false, got an integer"),
        ("supervisor", "heartbeat_interval", "1s", "expected a number, got a string"),
        ("sync", "entity_types", "user", "expected an array"),
        ("sink", "path", 3, "expected a string, got an integer"),
    ],
)
def test_bad_types(section: str, key: str, value: object, message: str) -> None:
    """A value of the wrong TOML type names the key and the expected type (no coercion)."""
    assert errors_of({section: {key: value}}) == [f"x.toml: {section}.{key}: {message}"]


def test_section_that_is_not_a_table() -> None:
    """A section given as a scalar is reported as needing a table."""
    assert errors_of({"sink": 3}) == ["x.toml: sink: expected a table, got an integer"]


def test_bool_is_not_an_integer() -> None:
    """TOML true is not accepted as cid."""
    with pytest.raises(ConfigError) as info:
        parse_settings({"tradovate": {"app_id": "a", "cid": True}}, source="x.toml")
    assert info.value.lines == ["x.toml: tradovate.cid: expected an integer, got a boolean"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("handshake_timeout", 0.0, "must be greater than 0"),
        ("idle_timeout", -1, "must be greater than 0"),
        ("renew_before", float("nan"), "must be a finite number"),
        ("cid", 0, "must be greater than 0"),
        ("app_id", "", "must not be empty"),
        ("environment", "prod", "must be one of 'demo' or 'live'"),
    ],
)
def test_bad_tradovate_values(key: str, value: object, message: str) -> None:
    """Non-positive timeouts, empty app_id and unknown environments are rejected."""
    assert errors_of({"tradovate": {"app_id": "a", "cid": 1, key: value}}) == [f"x.toml: tradovate.{key}: {message}"]


# --- URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["ws://127.0.0.1:1/x", "ws://127.3.4.5/x", "ws://[::1]:8765/x", "ws://localhost:8765/x", "wss://example.com/x"],
)
def test_ws_url_accepted(url: str) -> None:
    """wss:// anywhere and ws:// to loopback hosts are accepted."""
    assert parse({"tradovate": {"app_id": "a", "cid": 1, "ws_url": url}}).tradovate.ws_url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ws://example.com/v1/websocket", "only allowed to a loopback host"),
        ("ws://10.0.0.1/x", "only allowed to a loopback host"),
        ("https://example.com/x", "must start with wss:// or ws://"),
        ("wss:///nohost", "has no host"),
        ("wss://example.com:99999/x", "not a valid URL"),
    ],
)
def test_ws_url_rejected(url: str, message: str) -> None:
    """Plain ws:// to a remote host, wrong schemes, hostless or bad-port URLs are errors."""
    (line,) = errors_of({"tradovate": {"app_id": "a", "cid": 1, "ws_url": url}})
    assert line.startswith("x.toml: tradovate.ws_url: ") and message in line


def test_rest_http_to_remote_rejected() -> None:
    """Plain http:// REST to a non-loopback host is an error; to loopback it is fine."""
    (line,) = errors_of({"tradovate": {"app_id": "a", "cid": 1, "rest_url": "http://example.com/v1"}})
    assert line.startswith("x.toml: tradovate.rest_url: http:// (unencrypted) is only allowed to a loopback host")
    ok = parse({"tradovate": {"app_id": "a", "cid": 1, "rest_url": "http://localhost:1/v1"}})
    assert ok.tradovate.rest_url == "http://localhost:1/v1"


def test_ca_file_must_exist(tmp_path: Path) -> None:
    """A missing ca_file is an error; an existing readable one is accepted."""
    (line,) = errors_of({"tradovate": {"app_id": "a", "cid": 1, "ca_file": str(tmp_path / "nope.pem")}})
    assert line.startswith("x.toml: tradovate.ca_file: ") and "does not exist" in line
    pem = write(tmp_path, "-----BEGIN CERTIFICATE-----\n", "ca.pem")
    assert parse({"tradovate": {"app_id": "a", "cid": 1, "ca_file": str(pem)}}).tradovate.ca_file == str(pem)


# --- remainders -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("divisor", "remainders", "expected"),
    [
        (4, "all", (0, 1, 2, 3)),
        (4, " ALL ", (0, 1, 2, 3)),
        (8, [5, 0], (0, 5)),
        (16, "0-7,12", (0, 1, 2, 3, 4, 5, 6, 7, 12)),
        (16, " 0 - 2 , 5 ", (0, 1, 2, 5)),
        (4, "3", (3,)),
    ],
)
def test_remainder_forms(divisor: int, remainders: object, expected: tuple[int, ...]) -> None:
    """ "all", arrays and range strings resolve to a sorted tuple of unique remainders."""
    s = parse({"sync": {"divisor": divisor, "remainders": remainders}})
    assert s.sync.resolved_remainders == expected == s.sync.remainders


@pytest.mark.parametrize(
    ("remainders", "message"),
    [
        ([5], "remainder 5 >= divisor 4"),
        ("0-5", "remainder 5 >= divisor 4"),
        ("3-1", "bad range '3-1': start > end"),
        ("x", "'x' is not a remainder or a range like 0-7"),
        ("1,", "'' is not a remainder or a range like 0-7"),
        ("-1", "'-1' is not a remainder or a range like 0-7"),
        ([1, 1], "remainder 1 listed twice"),
        ("0-2,2", "remainder 2 listed twice"),
        ([], "empty selection"),
        ("", "empty selection"),
        ([-1], "remainder -1 < 0"),
        ([1, "2"], "item 1 is not an integer"),
        (3, 'expected "all", an array of integers or a string like "0-7,12"'),
    ],
)
def test_remainder_errors(remainders: object, message: str) -> None:
    """Out-of-range, malformed, duplicate and empty selections name sync.remainders."""
    lines = errors_of({"sync": {"divisor": 4, "remainders": remainders}})
    assert lines[0].startswith(f"x.toml: sync.remainders: {message}")
    assert len(lines) == 1


def test_divisor_must_be_positive() -> None:
    """divisor 0 is rejected, without a spurious remainders error."""
    assert errors_of({"sync": {"divisor": 0}}) == ["x.toml: sync.divisor: must be at least 1"]


def test_entity_types_and_expression() -> None:
    """Empty or duplicated entity_types and an unknown expression are errors."""
    assert errors_of({"sync": {"entity_types": []}}) == [
        "x.toml: sync.entity_types: must name at least one entity type"
    ]
    assert errors_of({"sync": {"entity_types": ["user", "user"]}}) == ["x.toml: sync.entity_types: 'user' listed twice"]
    assert errors_of({"sync": {"entity_types": ["user", 3]}}) == [
        "x.toml: sync.entity_types[1]: expected a string, got an integer"
    ]
    assert errors_of({"sync": {"expression": "modFoo"}}) == [
        "x.toml: sync.expression: must be one of 'modAccountId' or 'modUserId'"
    ]


# --- supervisor, sink, log, status -------------------------------------------------


@pytest.mark.parametrize(
    ("values", "line"),
    [
        ({"heartbeat_timeout": 1.0}, "supervisor.heartbeat_timeout: must be greater than heartbeat_interval (1.0)"),
        ({"backoff_initial": 5, "backoff_max": 1}, "supervisor.backoff_max: must be at least backoff_initial (5.0)"),
        ({"intensity": 0}, "supervisor.intensity: must be at least 1"),
        ({"max_concurrent_connects": 0}, "supervisor.max_concurrent_connects: must be at least 1"),
        ({"connect_spacing": -0.1}, "supervisor.connect_spacing: must be at least 0"),
        ({"period": 0}, "supervisor.period: must be greater than 0"),
    ],
)
def test_supervisor_constraints(values: dict[str, Any], line: str) -> None:
    """Supervisor timings must be positive and mutually consistent."""
    assert errors_of({"supervisor": values}) == [f"x.toml: {line}"]


def test_connect_spacing_zero_is_fine() -> None:
    """connect_spacing = 0 (no pacing) is allowed."""
    assert parse({"supervisor": {"connect_spacing": 0}}).supervisor.connect_spacing == 0


def test_postgres_requires_dsn() -> None:
    """sink.kind = postgres without a dsn is an error naming sink.dsn."""
    assert errors_of({"sink": {"kind": "postgres"}}) == ["x.toml: sink.dsn: required when sink.kind = 'postgres'"]
    assert errors_of({"sink": {"kind": "redis"}}) == [
        "x.toml: sink.kind: must be one of 'sqlite', 'jsonl' or 'postgres'"
    ]


def test_log_level_is_case_insensitive() -> None:
    """log.level and log.format accept any case and are normalised to lowercase."""
    s = parse({"log": {"level": "WARNING", "format": "JSON"}})
    assert (s.log.level, s.log.format) == ("warning", "json")
    assert errors_of({"log": {"level": "trace"}}) == [
        "x.toml: log.level: must be one of 'debug', 'info', 'warning' or 'error'"
    ]


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("", None),
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_listen_parsed(listen: str, address: tuple[str, int] | None) -> None:
    """status.listen parses to (host, port), or None when off."""
    assert parse({"status": {"listen": listen}}).status.address == address


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("::1:9464", "an IPv6 address needs brackets"),
        ("9464", 'expected "host:port"'),
        ("host:70000", "port '70000' is not a number in 0-65535"),
        ("host:http", "port 'http' is not a number"),
        (":9464", "missing host"),
        ("[zz]:1", "'zz' is not an IPv6 address"),
        ("[::1]9464", 'expected "[IPv6]:port"'),
    ],
)
def test_bad_listen(listen: str, message: str) -> None:
    """Malformed status.listen values are errors naming the key."""
    (line,) = errors_of({"status": {"listen": listen}})
    assert line.startswith("x.toml: status.listen: ") and message in line


# --- files and aggregated errors -------------------------------------------------


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    """A TOML syntax error is one line naming the file, line and column."""
    path = write(tmp_path, MINIMAL + "[sync]\ndivisor = = 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (line,) = info.value.lines
    assert line.startswith(f"{path}: line 5, column ") and "TOML syntax error" in line


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is a clear one-line error."""
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read config file: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    """A directory given as the config file is a one-line error."""
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: cannot read config file: ")


def test_invalid_utf8(tmp_path: Path) -> None:
    """A file that is not UTF-8 is rejected with a one-line error."""
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[tradovate]\napp_id = "\xff"\n')
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(path)


def test_all_errors_reported_at_once(tmp_path: Path) -> None:
    """Problems in several sections arrive together in one ConfigError, one line each."""
    path = write(
        tmp_path,
        """
[tradovate]
cid = "x"
ws_url = "ws://example.com/ws"

[sync]
divisor = 4
remainders = [5]
divsor = 3

[sink]
kind = "postgres"

[status]
listen = "nope"
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, machine_id=_machine, user=_user)
    err = info.value
    keys = [line.split(": ")[1] for line in err.lines]
    assert keys == [
        "tradovate.ws_url",
        "tradovate.app_id",
        "tradovate.cid",
        "sync.remainders",
        "sync.divsor",
        "sink.dsn",
        "status.listen",
    ]
    assert f"{path}: sync.remainders: remainder 5 >= divisor 4" in err.lines
    assert str(err) == "\n".join(err.lines)
    assert err.path == str(path)


# --- device id ------------------------------------------------------------------


def test_device_id_is_stable_per_machine_and_user() -> None:
    """The derived device_id is the same for the same machine id and user, 32 hex chars."""
    a = parse({}, machine_id=lambda: "m-1").tradovate.device_id
    b = parse({}, machine_id=lambda: "m-1").tradovate.device_id
    assert a == b == derive_device_id("m-1", "svc")
    assert len(a) == 32 and int(a, 16) >= 0


def test_device_id_differs_across_machines_and_users() -> None:
    """Another machine id or another OS user derives another device_id."""
    base = parse({}, machine_id=lambda: "m-1").tradovate.device_id
    assert parse({}, machine_id=lambda: "m-2").tradovate.device_id != base
    assert parse({}, machine_id=lambda: "m-1", user=lambda: "other").tradovate.device_id != base


def test_explicit_device_id_is_kept() -> None:
    """An explicit device_id is used as given and the machine id is not read."""

    def boom() -> str:
        raise AssertionError("machine id must not be read")

    s = parse({"tradovate": {"app_id": "a", "cid": 1, "device_id": "dev-42"}}, machine_id=boom)
    assert s.tradovate.device_id == "dev-42"


# --- masking, rendering, shard key ------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://sync:s3cr3t-pw@db.example:5432/shardsync", "postgresql://sync:***@db.example:5432/shardsync"),
        ("host=db.example user=sync password=s3cr3t-pw dbname=x", "host=db.example user=sync password=*** dbname=x"),
        ("host=db password='s3cr3t-pw with space' dbname=x", "host=db password=*** dbname=x"),
        ("postgresql://db.example/x?user=sync&password=s3cr3t-pw", "postgresql://db.example/x?user=sync&password=***"),
    ],
)
def test_masked_hides_dsn_password(dsn: str, shown: str) -> None:
    """masked()/render_settings show the DSN without its password anywhere."""
    s = parse({"sink": {"kind": "postgres", "dsn": dsn}})
    assert s.masked()["sink"]["dsn"] == shown
    text = render_settings(s)
    assert "s3cr3t-pw" not in text
    assert orjson.loads(text)["sink"]["dsn"] == shown
    assert any("s3cr3t-pw" in secret for secret in s.secrets())


def test_render_shows_resolved_values() -> None:
    """check-config output carries the resolved URLs, device_id and remainders."""
    s = parse({"sync": {"divisor": 4, "remainders": "1-2"}})
    shown = orjson.loads(render_settings(s))
    assert shown["sync"]["remainders"] == [1, 2]
    assert shown["tradovate"]["device_id"] == derive_device_id("machine-1", "svc")
    assert shown["tradovate"]["ws_url"] == "wss://demo.tradovateapi.com/v1/websocket"
    assert shown["credentials"]["file"] == ""


# --- shipped files ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["shardsync.toml", "demo.toml"])
def test_shipped_config_files_load(name: str) -> None:
    """config/shardsync.toml and config/demo.toml load without error."""
    s = load_config(REPO / "config" / name)
    assert s.tradovate.app_id


def test_shipped_reference_lists_every_key() -> None:
    """config/shardsync.toml spells out every key of every section."""
    data = tomllib.loads((REPO / "config" / "shardsync.toml").read_text())
    for section, model in Settings.model_fields.items():
        assert model.annotation is not None
        fields = model.annotation.model_fields
        assert set(data[section]) == set(fields), section


def test_demo_targets_the_simulator() -> None:
    """config/demo.toml runs 4 shards against the loopback simulator into ./demo-state."""
    s = load_config(REPO / "config" / "demo.toml")
    assert s.tradovate.rest_url == "http://127.0.0.1:8765/v1"
    assert s.tradovate.ws_url == "ws://127.0.0.1:8765/v1/websocket"
    assert s.sync.resolved_remainders == (0, 1, 2, 3)
    assert (s.sink.kind, s.sink.path) == ("sqlite", "./demo-state")
    assert s.status.address == ("127.0.0.1", 9464)
    assert os.fspath(s.sink.path) == "./demo-state"
