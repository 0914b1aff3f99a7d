"""The PostgreSQL sink: the sqlite tables plus a ``shard`` column, one connection per worker.

Single writer per shard is a session advisory lock keyed by the shard, so it
holds across hosts too. The DSN's password never leaves this module: errors
and ``repr`` show the DSN with it removed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shardsync.change import Change
from shardsync.sinks.base import Row, Sink, SinkError, batch_rows, check_shard

# ``json`` rather than ``jsonb``: it keeps the text exactly as received (key
# order, duplicates), like the sqlite sink, and still allows ->> in queries.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entities (
        shard INTEGER NOT NULL,
        entity_type TEXT NOT NULL,
        id BIGINT NOT NULL,
        account_id BIGINT,
        data JSON,
        updated_at TEXT,
        PRIMARY KEY (shard, entity_type, id)
    )""",
    """CREATE TABLE IF NOT EXISTS events (
        seq BIGSERIAL PRIMARY KEY,
        shard INTEGER NOT NULL,
        received_at TEXT,
        origin TEXT,
        entity_type TEXT,
        event_type TEXT,
        id BIGINT,
        data JSON
    )""",
    "CREATE INDEX IF NOT EXISTS entities_account_id ON entities (account_id)",
    "CREATE INDEX IF NOT EXISTS events_shard_received_at ON events (shard, received_at)",
)

# One statement per run of entity changes, the rows passed as arrays and
# events through COPY: executemany costs ~35 us a row in psycopg even
# pipelined. Arrays go binary (%b): text arrays would escape every quote
# of every JSON document with a regex.
UPSERT = (
    "INSERT INTO entities (shard, entity_type, id, account_id, data, updated_at) "
    "SELECT %s, e, i, a, d::json, u FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::text[], %b::text[]) "
    "AS t(e, i, a, d, u) ON CONFLICT (shard, entity_type, id) DO UPDATE SET "
    "account_id = excluded.account_id, data = excluded.data, updated_at = excluded.updated_at"
)
DELETE = (
    "DELETE FROM entities WHERE shard = %s AND (entity_type, id) IN (SELECT * FROM unnest(%s::text[], %s::bigint[]))"
)
APPEND = "COPY events (shard, received_at, origin, entity_type, event_type, id, data) FROM STDIN"

#: First key of the advisory locks (ASCII "SS"); the second is the shard. The
#: schema lock uses -1, which no shard has.
LOCK_CLASS = 0x5353
SCHEMA_LOCK = -1



def redact(dsn: str) -> str:
    """The DSN without its password, for messages; unparseable DSNs are not echoed at all."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparseable dsn>"
    params.pop("password", None)
    return make_conninfo("", **params) or "<default dsn>"


class PostgresSink(Sink):
    """Shard ``remainder``'s rows in shared ``entities``/``events`` tables, written in one transaction per batch."""

    def __init__(self, dsn: str, *, remainder: int, divisor: int) -> None:
        check_shard(remainder, divisor)
        self.shard = remainder
        self._dsn = dsn
        self.where = f"{redact(dsn)} shard {remainder}/{divisor}"
        self._closed = False
        self._conn: psycopg.Connection[Any] | None = self._connect()

    def __repr__(self) -> str:
        return f"PostgresSink({self.where!r})"

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            # autocommit: transactions are explicit (conn.transaction()), so no
            # statement ever leaves one open between batches.
            conn = psycopg.connect(self._dsn, autocommit=True)
        except psycopg.Error as exc:
            raise SinkError(f"postgres sink: cannot connect to {self.where}: {exc}") from exc
        try:
            with conn.transaction():
                # Serialised because concurrent CREATE ... IF NOT EXISTS from
                # many workers starting together can still collide in pg_type.
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, SCHEMA_LOCK))
                for statement in SCHEMA:
                    conn.execute(statement)
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, self.shard)).fetchone()
            if not row or not row[0]:
                raise SinkError(f"postgres sink: {self.where} is in use by another process")
        except psycopg.Error as exc:
            conn.close()
            raise SinkError(f"postgres sink: cannot initialise {self.where}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise SinkError(f"postgres sink: {self.where} is closed")
        if self._conn is None or self._conn.closed:
            # The old session died and took its advisory lock with it; the
            # reconnect takes it again or fails if another writer got in.
            self._conn = None
            self._conn = self._connect()
        return self._conn

    def load(self) -> Iterator[tuple[str, int, dict[str, Any]]]:
        conn = self._connection()
        try:
            rows = conn.execute(
                "SELECT entity_type, id, data::text FROM entities WHERE shard = %s", (self.shard,)
            ).fetchall()
        except psycopg.Error as exc:
            self._drop_if_broken(conn)
            raise SinkError(f"postgres sink: cannot read {self.where}: {exc}") from exc
        for entity_type, ident, data in rows:
            yield entity_type, ident, orjson.loads(data)

    def write(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        runs, events = self._rows(changes)
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cursor:
                for statement, rows in runs:
                    cursor.execute(statement, self._columns(rows))
                with cursor.copy(APPEND) as copy:
                    for event in events:
                        copy.write_row(event)
        except Exception as exc:
            self._drop_if_broken(conn)
            raise SinkError(f"postgres sink: {self.where}: batch of {len(changes)} not written: {exc}") from exc

    def _columns(self, rows: list[Row]) -> tuple[Any, ...]:
        # One row per key (ON CONFLICT may touch a row only once per
        # statement): batch_rows keeps only each key's last change.
        return (self.shard, *([row[i] for row in rows] for i in range(len(rows[0]))))

    def _drop_if_broken(self, conn: psycopg.Connection[Any]) -> None:
        if conn.broken or conn.closed:
            self._conn = None
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _rows(self, changes: Sequence[Change]) -> tuple[list[tuple[str, list[Row]]], list[Row]]:
        return batch_rows("postgres", self.where, changes, upsert=UPSERT, delete=DELETE, event_prefix=(self.shard,))

    def close(self) -> None:
        self._closed = True
        conn, self._conn = getattr(self, "_conn", None), None
        if conn is not None:
            # Closing the session releases the advisory lock.
            with contextlib.suppress(psycopg.Error):
                conn.close()
