"""The PostgreSQL sink: shared tables keyed by ``(divisor, shard)``, one connection per worker.

Single writer per shard is a session advisory lock keyed by the shard, so it
holds across hosts too. Each batch is one transaction: entities, events with
their per-shard ``shard_seq`` (from the shard's ``shard_seqs`` row, so the
numbers commit in order and without gaps), the status row, and one
``NOTIFY shardsync_changes`` with ``{"divisor": D, "remainder": R, "seq":
last}``, delivered at commit.  The schema and its upgrades are in
``postgres_schema``.  The DSN's password never leaves this module: errors and
``repr`` show the DSN with it removed.

A batch whose connection broke after its COMMIT went out is *in doubt*: it
may have committed.  The retry (the same changes first, as the worker's
outage keeps them) reconnects, takes the writer lock and reads the shard's
``last_seq``: moved by exactly that batch, its changes are not written again
(the change log would hold them twice, a fill counted twice); unmoved, the
whole batch goes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shardsync.change import Change
from shardsync.sinks import postgres_schema
from shardsync.sinks.base import (
    PRUNE_BATCH,
    Freshness,
    Row,
    Sink,
    SinkError,
    SinkState,
    SinkUnavailable,
    batch_rows,
    check_shard,
    cutoff,
    retired_status,
)

#: The channel of the per-batch notifications.
CHANNEL = "shardsync_changes"

# One statement per run of entity changes, the rows passed as arrays and
# events through COPY: executemany costs ~35 us a row in psycopg even
# pipelined. Arrays go binary (%b): text arrays would escape every quote
# of every JSON document with a regex.
UPSERT = (
    "INSERT INTO entities (divisor, shard, entity_type, id, account_id, data, updated_at) "
    "SELECT %s, %s, e, i, a, d::jsonb, u::timestamptz "
    "FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::text[], %b::text[]) "
    "AS t(e, i, a, d, u) ON CONFLICT (divisor, shard, entity_type, id) DO UPDATE SET "
    "account_id = excluded.account_id, data = excluded.data, updated_at = excluded.updated_at"
)
DELETE = (
    "DELETE FROM entities WHERE divisor = %s AND shard = %s "
    "AND (entity_type, id) IN (SELECT * FROM unnest(%s::text[], %s::bigint[]))"
)
TAKE_SEQ = "UPDATE shard_seqs SET last_seq = last_seq + %s WHERE divisor = %s AND shard = %s RETURNING last_seq"
APPEND = (
    "COPY events (divisor, shard, shard_seq, received_at, origin, entity_type, event_type, id, account_id, data) "
    "FROM STDIN"
)
STATUS = (
    "INSERT INTO shard_status (remainder, divisor, expression, state, snapshot_at, last_event_at, last_commit_at, "
    "session) VALUES (%s, %s, %s, %s, %s::timestamptz, %s::timestamptz, %s::timestamptz, %s) "
    "ON CONFLICT (divisor, remainder) DO UPDATE SET expression = excluded.expression, state = excluded.state, "
    "snapshot_at = excluded.snapshot_at, last_event_at = excluded.last_event_at, "
    "last_commit_at = excluded.last_commit_at, session = excluded.session"
)
NOTIFY = "SELECT pg_notify('shardsync_changes', %s)"
PRUNE = (
    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE divisor = %s AND shard = %s "
    "AND received_at < %s::timestamptz ORDER BY received_at LIMIT %s)"
)


def iso(column: str) -> str:
    """SQL rendering a timestamptz column as the sinks' ISO-8601 UTC text (``...T12:00:00.000Z``)."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""


STATUS_SELECT = (
    f"SELECT remainder, divisor, expression, state, {iso('snapshot_at')}, {iso('last_event_at')}, "  # noqa: S608
    f"{iso('last_commit_at')}, session FROM shard_status"
)

#: First key of the advisory locks (ASCII "SS"). The schema lock is the
#: two-int4 form (0x5353, -1); a shard's writer lock is the one-bigint form
#: (a different lock space) holding class, divisor and remainder.
LOCK_CLASS = 0x5353
SCHEMA_LOCK = -1


def shard_lock(remainder: int, divisor: int) -> int:
    """The advisory lock key of one shard's writer (divisor and remainder are below 2**20)."""
    return (LOCK_CLASS << 40) | (divisor << 20) | remainder


def notification(divisor: int, remainder: int, seq: int) -> str:
    """The NOTIFY payload: which shard committed, and its last ``shard_seq``."""
    return orjson.dumps({"divisor": divisor, "remainder": remainder, "seq": seq}).decode()


def redact(dsn: str) -> str:
    """The DSN without its password, for messages; unparseable DSNs are not echoed at all."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparseable dsn>"
    params.pop("password", None)
    return make_conninfo("", **params) or "<default dsn>"


@dataclass(frozen=True, slots=True)
class Doubt:
    """A batch that failed with its connection: whether it committed is known only after the reconnect.

    ``changes`` is the caller's own sequence, which it may extend meanwhile (the worker's batch grows, never
    changes what it holds), and ``count`` how many it had when it failed: the retry of that very sequence
    skips those once they committed.  A snapshot's compact run makes a new Change at each read, so its retry is known by
    the sequence, not by its changes (a tuple copy would also make a million of them at once).
    """

    changes: Sequence[Change]
    count: int
    #: The shard's ``last_seq`` before it, and after it had it committed.
    before: int
    after: int

    def settle(self, seq: int, changes: Sequence[Change], where: str) -> Sequence[Change]:
        """What of ``changes`` is still to write, the shard's ``last_seq`` being ``seq`` after the reconnect."""
        if seq == self.before:
            return changes
        if seq != self.after:
            raise SinkError(f"postgres sink: {where}: shard_seq is {seq}, expected {self.before} or {self.after} "
                            "after a lost connection: another writer?")
        count = self.count
        prefix = zip(changes, islice(self.changes, count), strict=False)  # changes has count or more
        if len(changes) >= count and (changes is self.changes or all(a is b for a, b in prefix)):
            return changes[count:]
        # Not a retry of it (the worker rebuilt its batch from the mirror): upserts and deletes are idempotent.
        return changes


class PostgresSink(Sink):
    """Shard ``remainder``/``divisor``'s rows in the shared tables, written in one transaction per batch."""

    def __init__(self, dsn: str, *, remainder: int, divisor: int) -> None:
        check_shard(remainder, divisor)
        self.remainder, self.divisor = remainder, divisor
        self.shard = remainder
        self._dsn = dsn
        self.where = f"{redact(dsn)} shard {remainder}/{divisor}"
        self._closed = False
        self._marked: SinkState | None = None
        #: The shard's ``last_seq`` as this writer knows it committed (read at each connect).
        self._seq = 0
        self._doubt: Doubt | None = None
        self._conn: psycopg.Connection[Any] | None = self._connect()

    def __repr__(self) -> str:
        return f"PostgresSink({self.where!r})"

    def _connect(self, *, again: bool = False) -> psycopg.Connection[Any]:
        try:
            # autocommit: transactions are explicit (conn.transaction()), so no
            # statement ever leaves one open between batches.
            conn = psycopg.connect(self._dsn, autocommit=True)
        except psycopg.Error as exc:
            raise SinkUnavailable(f"postgres sink: cannot connect to {self.where}: {exc}") from exc
        try:
            with conn.transaction():
                # Serialised because concurrent CREATE ... IF NOT EXISTS from
                # many workers starting together can still collide in pg_type.
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, SCHEMA_LOCK))
                postgres_schema.prepare(conn, self.divisor, self.where)
            lock = shard_lock(self.remainder, self.divisor)
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock,)).fetchone()
            if not row or not row[0]:
                if again:
                    # Most likely this writer's own lost session, which holds the lock until the server notices.
                    raise SinkUnavailable(f"postgres sink: {self.where}: writer lock still held after a lost "
                                          "connection")
                raise SinkError(f"postgres sink: {self.where} is in use by another process")
            conn.execute(
                "INSERT INTO shard_seqs (divisor, shard, last_seq) VALUES (%s, %s, 0) ON CONFLICT DO NOTHING",
                (self.divisor, self.remainder),
            )
            with conn.cursor() as cursor:
                self._seq = self._last_seq(cursor)
        except psycopg.Error as exc:
            error = SinkUnavailable if conn.broken else SinkError
            conn.close()
            raise error(f"postgres sink: cannot initialise {self.where}: {exc}") from exc
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
            self._conn = self._connect(again=True)
        return self._conn

    def load(self) -> Iterator[tuple[str, int, dict[str, Any]]]:
        conn = self._connection()
        try:
            rows = conn.execute(
                "SELECT entity_type, id, data::text FROM entities WHERE divisor = %s AND shard = %s",
                (self.divisor, self.remainder),
            ).fetchall()
        except psycopg.Error as exc:
            self._drop_if_broken(conn)
            raise SinkError(f"postgres sink: cannot read {self.where}: {exc}") from exc
        for entity_type, ident, data in rows:
            yield entity_type, ident, orjson.loads(data)

    def write(self, changes: Sequence[Change], freshness: Freshness | None = None) -> None:
        if not changes:
            if freshness is not None:
                self.mark(freshness)
            return
        if freshness is not None:
            self.check_freshness(freshness)
        conn = self._connection()
        if self._doubt is not None:
            doubt, self._doubt = self._doubt, None
            changes = doubt.settle(self._seq, changes, self.where)
            if not changes:
                if freshness is not None:
                    self.mark(freshness)
                return
        runs, events = self._rows(changes)
        divisor, shard = self.divisor, self.remainder
        try:
            with conn.transaction(), conn.cursor() as cursor:
                for statement, rows in runs:
                    cursor.execute(statement, self._columns(rows))
                taken = cursor.execute(TAKE_SEQ, (len(events), divisor, shard)).fetchone()
                if taken is None:
                    raise SinkError(f"postgres sink: {self.where}: no shard_seqs row")
                last = int(taken[0])
                first = last - len(events) + 1
                with cursor.copy(APPEND) as copy:
                    for n, event in enumerate(events):
                        copy.write_row((divisor, shard, first + n, *event))
                if freshness is not None:
                    cursor.execute(STATUS, freshness.row())
                cursor.execute(NOTIFY, (notification(divisor, shard, last),))
        except Exception as exc:
            if not self._drop_if_broken(conn):
                raise SinkError(f"postgres sink: {self.where}: batch of {len(changes)} not written: {exc}") from exc
            self._doubt = Doubt(changes, len(changes), self._seq, self._seq + len(events))
            raise SinkUnavailable(f"postgres sink: {self.where}: batch of {len(changes)} in doubt (connection "
                                  f"lost): {exc}") from exc
        self._seq = last
        if freshness is not None:
            self._marked = freshness.state

    def mark(self, freshness: Freshness, *, drop_entities: bool = False) -> None:
        self.check_freshness(freshness)
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cursor:
                if drop_entities:
                    cursor.execute("DELETE FROM entities WHERE divisor = %s AND shard = %s",
                                   (self.divisor, self.remainder))
                cursor.execute(STATUS, freshness.row())
                if freshness.state != self._marked:
                    # A state change wakes followers (they report shards that are not live).
                    cursor.execute(NOTIFY, (notification(self.divisor, self.remainder, self._last_seq(cursor)),))
        except psycopg.Error as exc:
            error = SinkUnavailable if self._drop_if_broken(conn) else SinkError
            raise error(f"postgres sink: {self.where}: status not written: {exc}") from exc
        self._marked = freshness.state

    def _last_seq(self, cursor: psycopg.Cursor[Any]) -> int:
        row = cursor.execute(
            "SELECT last_seq FROM shard_seqs WHERE divisor = %s AND shard = %s", (self.divisor, self.remainder)
        ).fetchone()
        return int(row[0]) if row else 0

    def status(self) -> Freshness | None:
        """This shard's status row, if one was written."""
        conn = self._connection()
        try:
            row = conn.execute(
                STATUS_SELECT + " WHERE divisor = %s AND remainder = %s", (self.divisor, self.remainder)
            ).fetchone()
        except psycopg.Error as exc:
            self._drop_if_broken(conn)
            raise SinkError(f"postgres sink: cannot read {self.where}: {exc}") from exc
        return None if row is None else Freshness.from_row(row)

    def prune(self, retention: float, *, now: float, limit: int = PRUNE_BATCH) -> int:
        before = cutoff(retention, now)
        if before is None:
            return 0
        conn = self._connection()
        try:
            removed = conn.execute(PRUNE, (self.divisor, self.remainder, before, limit)).rowcount
        except psycopg.Error as exc:
            self._drop_if_broken(conn)
            raise SinkError(f"postgres sink: {self.where}: prune failed: {exc}") from exc
        return max(0, removed)

    def _columns(self, rows: list[Row]) -> tuple[Any, ...]:
        # One row per key (ON CONFLICT may touch a row only once per
        # statement): batch_rows keeps only each key's last change.
        return (self.divisor, self.remainder, *([row[i] for row in rows] for i in range(len(rows[0]))))

    def _drop_if_broken(self, conn: psycopg.Connection[Any]) -> bool:
        """Forget a connection the error broke (the next call reconnects); True if it was broken."""
        if conn.broken or conn.closed:
            self._conn = None
            with contextlib.suppress(psycopg.Error):
                conn.close()
            return True
        return False

    def _rows(self, changes: Sequence[Change]) -> tuple[list[tuple[str, list[Row]]], list[Row]]:
        return batch_rows("postgres", self.where, changes, upsert=UPSERT, delete=DELETE)

    def close(self) -> None:
        self._closed = True
        conn, self._conn = getattr(self, "_conn", None), None
        if conn is not None:
            # Closing the session releases the advisory lock.
            with contextlib.suppress(psycopg.Error):
                conn.close()


def retire(dsn: str, *, remainder: int, divisor: int, replaced: bool = False) -> None:
    """Mark the shard ``retired`` in ``shard_status``; when ``replaced``, drop its ``entities`` rows with it.

    Takes the shard's writer lock, so it fails (SinkError) while a worker still writes it.
    Not ``replaced`` (a remainder this host gave up), its rows stay: gone rows
    would read as "no position", stale ones are marked.
    """
    with PostgresSink(dsn, remainder=remainder, divisor=divisor) as sink:
        sink.mark(retired_status(sink.status(), remainder, divisor), drop_entities=replaced)
