"""Files written by the previous shardsync (no schema_version) are upgraded in place on open, once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from shardsync.change import Change
from shardsync.sinks import open_sink
from shardsync.sinks.jsonl import KEYS

AT = "2024-05-01T12:00:00.000Z"

#: sinks/sqlite.py's SCHEMA before schema_version existed, verbatim.
SQLITE_V1 = """
CREATE TABLE IF NOT EXISTS entities (
    entity_type TEXT,
    id INTEGER,
    account_id INTEGER,
    data TEXT,
    updated_at TEXT,
    PRIMARY KEY (entity_type, id)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    received_at TEXT,
    origin TEXT,
    entity_type TEXT,
    event_type TEXT,
    id INTEGER,
    data TEXT
);
CREATE INDEX IF NOT EXISTS entities_account_id ON entities (account_id);
CREATE INDEX IF NOT EXISTS events_received_at ON events (received_at);
"""


def sqlite_v1(path: Path) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(SQLITE_V1)
    db.executemany(
        "INSERT INTO entities VALUES (?, ?, ?, ?, ?)",
        [
            ("order", 10, 7, '{"id":10,"accountId":7}', AT),
            ("fill", 1, None, '{"id":1,"orderId":10}', AT),
            ("fill", 2, None, '{"id":2,"orderId":99}', AT),
            ("account", 7, 7, '{"id":7}', AT),
        ],
    )
    db.executemany(
        "INSERT INTO events (received_at, origin, entity_type, event_type, id, data) VALUES (?, ?, ?, ?, ?, ?)",
        [(AT, "snapshot", "order", "Created", 10, '{"id":10,"accountId":7}'),
         (AT, "live", "fill", "Created", 1, '{"id":1,"orderId":10}'),
         (AT, "system", "alertSignal", "Event", None, '{"x":1}')],
    )
    db.close()


def dump(path: Path) -> tuple[list[tuple[object, ...]], ...]:
    db = sqlite3.connect(path)
    try:
        return (
            db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall(),
            db.execute("SELECT * FROM entities ORDER BY entity_type, id").fetchall(),
            db.execute("SELECT * FROM events ORDER BY seq").fetchall(),
            db.execute("SELECT * FROM schema_version").fetchall(),
        )
    finally:
        db.close()


def test_sqlite_v1_file_is_upgraded_keeping_its_rows(tmp_path: Path) -> None:
    """An old file keeps every row, gains events.account_id, its index, shard_status, schema_version 2,
    and its stored fills take their order's account; a second open changes nothing."""
    file = tmp_path / "shard-003-of-016.sqlite3"
    sqlite_v1(file)
    with open_sink("sqlite", path=str(tmp_path), remainder=3, divisor=16) as sink:
        assert {(t, i) for t, i, _ in sink.load()} == {("order", 10), ("fill", 1), ("fill", 2), ("account", 7)}
        sink.write([Change("live", "fill", "Created", 3, {"id": 3, "orderId": 10}, AT, 7)])
    schema, entities, events, version = dump(file)
    assert version == [(2,)]
    names = {name for _, name, _ in schema}
    assert {"shard_status", "schema_version", "events_received_at_account_id"} <= names
    assert [(t, i, a) for t, i, a, _, _ in entities] == [
        ("account", 7, 7), ("fill", 1, 7), ("fill", 2, None), ("fill", 3, 7), ("order", 10, 7)
    ]
    # The old log rows are kept as they were (account_id NULL: the log is not rewritten), the new one attributed.
    assert [(s, o, t, a) for s, _, o, t, _, _, _, a in events] == [
        (1, "snapshot", "order", None), (2, "live", "fill", None), (3, "system", "alertSignal", None),
        (4, "live", "fill", 7),
    ]
    with open_sink("sqlite", path=str(tmp_path), remainder=3, divisor=16):
        pass
    assert dump(file) == (schema, entities, events, version)


def test_sqlite_fresh_and_upgraded_files_have_the_same_tables(tmp_path: Path) -> None:
    """A file created by the new code and an upgraded one have identical columns in every table."""
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    sqlite_v1(old / "shard-000-of-001.sqlite3")
    for directory in (old, new):
        open_sink("sqlite", path=str(directory), remainder=0, divisor=1).close()

    def columns(directory: Path) -> dict[str, list[tuple[object, ...]]]:
        db = sqlite3.connect(directory / "shard-000-of-001.sqlite3")
        try:
            tables = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            return {t: db.execute(f"PRAGMA table_info({t})").fetchall() for t in tables}
        finally:
            db.close()

    assert columns(old) == columns(new)


def test_jsonl_old_lines_are_numbered_and_attributed(tmp_path: Path) -> None:
    """An old-format log is rewritten once: seq 1..n, accountId (fills through their order), state unchanged."""
    log = tmp_path / "shard-003-of-016.jsonl"
    old = [
        {"origin": "snapshot", "entityType": "order", "eventType": "Created", "entity": {"id": 10, "accountId": 7},
         "receivedAt": AT},
        {"origin": "live", "entityType": "fill", "eventType": "Created", "entity": {"id": 1, "orderId": 10},
         "receivedAt": AT},
        {"origin": "system", "entityType": "alertSignal", "eventType": "Event", "entity": {"accountId": 7},
         "receivedAt": AT},
        {"origin": "live", "entityType": "order", "eventType": "Deleted", "entity": {"id": 10, "accountId": 7},
         "receivedAt": AT},
        {"origin": "live", "entityType": "fill", "eventType": "Updated", "entity": {"id": 1, "orderId": 10, "q": 2},
         "receivedAt": AT},
    ]
    log.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in old))
    with open_sink("jsonl", path=str(tmp_path), remainder=3, divisor=16) as sink:
        assert {(t, i): e for t, i, e in sink.load()} == {("fill", 1): {"id": 1, "orderId": 10, "q": 2}}
        sink.write([Change("live", "account", "Created", 7, {"id": 7}, AT, 7)])
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert [list(line) for line in lines] == [list(KEYS)] * 6
    assert [(line["seq"], line["accountId"]) for line in lines] == [(1, 7), (2, 7), (3, 7), (4, 7), (5, None), (6, 7)]
    assert [{k: v for k, v in line.items() if k not in ("seq", "accountId")} for line in lines[:5]] == old
    inode = log.stat().st_ino
    with open_sink("jsonl", path=str(tmp_path), remainder=3, divisor=16):
        pass
    assert log.stat().st_ino == inode
