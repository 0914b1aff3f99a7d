"""WorkerOptions is the one definition of what a worker depends on: built in the parent, read whole by the worker."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

from shardsync.config import parse_settings
from shardsync.supervisor.options import worker_options
from shardsync.worker.options import WorkerOptions

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "daemon" / "shardsync"
#: The worker's code: its package (the post-fork bootstrap included, worker/boot.py).
WORKER_SOURCES = sorted((PACKAGE / "worker").glob("*.py"))
#: Fields the configuration file does not set: fixed defaults, overridden only by tests and benches.
FIXED = {"snapshot_quiet", "permits"}


def settings(**sections: dict[str, Any]) -> Any:
    data: dict[str, dict[str, Any]] = {"tradovate": {"app_id": "unit", "cid": 1}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_settings(data, machine_id=lambda: "machine", user=lambda: "user")


def option_reads(path: Path) -> set[str]:
    """Attribute names read from anything called ``options`` (``options.x``, ``self.options.x``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            value = node.value
            if (isinstance(value, ast.Name) and value.id == "options") or (
                isinstance(value, ast.Attribute) and value.attr == "options"
            ):
                names.add(node.attr)
    return names


def test_every_option_is_read_by_the_worker_and_nothing_else_is() -> None:
    """The worker's code reads every WorkerOptions field, and reads no option that is not a field."""
    fields = {f.name for f in dataclasses.fields(WorkerOptions)}
    read = set().union(*(option_reads(path) for path in WORKER_SOURCES))
    assert read == fields


def test_the_worker_never_imports_the_configuration() -> None:
    """No module of worker/ imports shardsync.config: the parent hands the worker its options."""
    for path in sorted((PACKAGE / "worker").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "shardsync.config", path
            elif isinstance(node, ast.Import):
                assert all(alias.name != "shardsync.config" for alias in node.names), path


def test_worker_options_take_every_configured_field_from_the_settings() -> None:
    """Each field the config sets comes from its key: changing the key changes exactly that field."""
    base = worker_options(settings())
    changes: dict[str, tuple[dict[str, Any], Any]] = {
        "ws_url": ({"tradovate": {"ws_url": "ws://127.0.0.1:1/ws"}}, "ws://127.0.0.1:1/ws"),
        "divisor": ({"sync": {"divisor": 8}}, 8),
        "expression": ({"sync": {"expression": "modUserId"}}, "modUserId"),
        "entity_types": ({"sync": {"entity_types": ["user"]}}, ("user",)),
        "split_responses": ({"sync": {"split_responses": False}}, False),
        "ca_file": ({"tradovate": {"ca_file": __file__}}, __file__),
        "handshake_timeout": ({"tradovate": {"handshake_timeout": 3.0}}, 3.0),
        "idle_timeout": ({"tradovate": {"idle_timeout": 4.0}}, 4.0),
        "max_message_bytes": ({"tradovate": {"max_message_bytes": 1 << 20}}, 1 << 20),
        "heartbeat_interval": ({"supervisor": {"heartbeat_interval": 0.5}}, 0.5),
        "backoff_initial": ({"supervisor": {"backoff_initial": 0.25}}, 0.25),
        "backoff_max": ({"supervisor": {"backoff_max": 7.0}}, 7.0),
        "sink_kind": ({"sink": {"kind": "jsonl"}}, "jsonl"),
        "sink_path": ({"sink": {"path": "/var/lib/x"}}, "/var/lib/x"),
        "sink_dsn": ({"sink": {"kind": "postgres", "dsn": "postgresql://h/db"}}, "postgresql://h/db"),
        "batch_max": ({"sink": {"batch_max": 100}}, 100),
        "flush_interval": ({"sink": {"flush_interval": 0.01}}, 0.01),
        "response_timeout": ({"tradovate": {"response_timeout": 5.0}}, 5.0),
        "snapshot_timeout": ({"tradovate": {"snapshot_timeout": 60.0}}, 60.0),
        "max_snapshot_bytes": ({"tradovate": {"max_snapshot_bytes": 1 << 24}}, 1 << 24),
        "max_snapshot_entities": ({"tradovate": {"max_snapshot_entities": 1000}}, 1000),
        "deletion_grace": ({"tradovate": {"deletion_grace": 2.5}}, 2.5),
        "max_resync_delete_ratio": ({"tradovate": {"max_resync_delete_ratio": 0.9}}, 0.9),
        "events_retention": ({"sink": {"events_retention": "1d"}}, 86400.0),
        "quota_backoff": ({"tradovate": {"quota_backoff": 2.0}}, 2.0),
    }
    assert set(changes) | FIXED == {f.name for f in dataclasses.fields(WorkerOptions)}
    for name, (sections, value) in changes.items():
        changed = worker_options(settings(**sections))
        assert getattr(changed, name) == value, name
        others = {f.name for f in dataclasses.fields(WorkerOptions)} - {name, "sink_kind"}
        assert all(getattr(changed, o) == getattr(base, o) for o in others), name


def test_parent_only_settings_do_not_change_the_options() -> None:
    """Login, renewal, restart-policy, permit, status and log settings leave the worker options equal."""
    base = worker_options(settings())
    parent_only = [
        {"tradovate": {"app_version": "9.9", "renew_before": 60.0, "captcha_backoff": 5.0, "lockout_backoff": 5.0,
                       "device_id": "other", "rest_url": "http://127.0.0.1:1/v1"}},
        {"supervisor": {"heartbeat_timeout": 30.0, "stable_after": 5.0, "intensity": 2, "period": 9.0,
                        "shutdown_timeout": 1.0, "start_timeout": 1.0, "max_concurrent_connects": 9,
                        "connect_spacing": 0.0}},
        {"log": {"level": "debug", "format": "console"}, "status": {"listen": ""}},
        {"sync": {"divisor": 1, "remainders": [0]}},
    ]
    for sections in parent_only:
        assert worker_options(settings(**sections)) == base, sections
