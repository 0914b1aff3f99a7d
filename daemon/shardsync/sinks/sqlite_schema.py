"""The tables of a sqlite shard file, and their in-place upgrade (``schema_version``).

Version 1 is the schema shardsync wrote before ``schema_version`` existed
(``entities`` and ``events`` only).  Version 2 adds ``events.account_id``
(indexed after ``received_at``, for per-account time windows), the ``shard_status`` freshness
row, and attributes stored fills (and other children without ``accountId``)
through their parent.  Opening a file upgrades it in one transaction; the
second open finds the current version and does nothing.
"""

from __future__ import annotations

import sqlite3

from shardsync.sinks.attribution import backfill_statements
from shardsync.sinks.base import SinkError

CURRENT = 2

_STATUS = """CREATE TABLE shard_status (
    remainder INTEGER NOT NULL,
    divisor INTEGER NOT NULL,
    expression TEXT NOT NULL,
    state TEXT NOT NULL,
    snapshot_at TEXT,
    last_event_at TEXT,
    last_commit_at TEXT,
    session TEXT NOT NULL,
    PRIMARY KEY (divisor, remainder)
)"""
# Time first: every insert lands at the end of the index, as with the plain
# received_at index it replaces.  An (account_id, received_at) index takes
# inserts all over the tree and cost the worker ~17 % of its sqlite
# throughput per CPU-second (bench/throughput.py, paired runs); per-account
# time windows ("account 7, last minute") read the window's index entries.
_WINDOW_INDEX = "CREATE INDEX events_received_at_account_id ON events (received_at, account_id)"
_VERSION = "CREATE TABLE schema_version (version INTEGER NOT NULL)"

#: A new file, at the current version.  ``events.account_id`` comes last, where
#: the upgrade's ALTER TABLE puts it, so new and upgraded files are alike.
CREATE: tuple[str, ...] = (
    """CREATE TABLE entities (
        entity_type TEXT,
        id INTEGER,
        account_id INTEGER,
        data TEXT,
        updated_at TEXT,
        PRIMARY KEY (entity_type, id)
    )""",
    """CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        received_at TEXT,
        origin TEXT,
        entity_type TEXT,
        event_type TEXT,
        id INTEGER,
        data TEXT,
        account_id INTEGER
    )""",
    "CREATE INDEX entities_account_id ON entities (account_id)",
    _WINDOW_INDEX,
    _STATUS,
    _VERSION,
)

#: Statements taking a file from version N to N+1.
UPGRADES: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE events ADD COLUMN account_id INTEGER",
        "DROP INDEX IF EXISTS events_received_at",
        _WINDOW_INDEX,
        _STATUS,
        *backfill_statements("json_extract(entities.data, '$.{}')"),
        _VERSION,
    ),
}


def version_of(conn: sqlite3.Connection) -> int:
    """The file's schema version: 0 for an empty file, 1 for the tables without ``schema_version``."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" in tables:
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else 0
    return 1 if "entities" in tables else 0


def prepare(conn: sqlite3.Connection, where: str) -> int:
    """Create or upgrade the schema of ``conn`` (autocommit mode) in one transaction; returns the version found.

    The caller holds the shard's writer lock, so no other writer upgrades at the same time.
    """
    found = version_of(conn)
    if found > CURRENT:
        raise SinkError(f"sqlite sink: {where} has schema version {found}, newer than this shardsync ({CURRENT})")
    if found == CURRENT:
        return found
    statements = CREATE if found == 0 else tuple(s for v in range(found, CURRENT) for s in UPGRADES[v])
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in statements:
            conn.execute(statement)
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (CURRENT,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found
