"""``follow`` over PostgreSQL: one connection that LISTENs on ``shardsync_changes`` and reads per-shard cursors.

A wake (a notification, or the fallback poll) costs one query of the small
``shard_seqs`` table; only shards whose ``last_seq`` passed the follower's
position are read, by ``(divisor, shard, shard_seq)`` through the
``events_cursor`` index.  The global ``events.seq`` is never used: shards
commit its values out of order.  A broken connection is reopened (and
LISTEN repeated) on the next call; nothing is missed, because positions are
the follower's and the rows are read by range.
"""

from __future__ import annotations

import contextlib
import select
from typing import Any

import orjson
import psycopg

from shardsync.follow.cursor import ShardId
from shardsync.follow.record import Record
from shardsync.follow.source import SourceError
from shardsync.sinks.base import Freshness
from shardsync.sinks.postgres import CHANNEL, STATUS_SELECT, iso, redact

READ = (
    f"SELECT shard_seq, origin, entity_type, event_type, id, account_id, {iso('received_at')}, data::text "  # noqa: S608
    "FROM events WHERE divisor = %s AND shard = %s AND shard_seq > %s ORDER BY shard_seq LIMIT %s"
)


class PostgresSource:
    """Every shard in the database's ``shard_seqs``, woken by NOTIFY."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self.where = redact(dsn)
        self._conn: psycopg.Connection[Any] | None = None
        self._heads: dict[ShardId, int] = {}
        self._connection()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self._close()
        try:
            conn = psycopg.connect(self._dsn, autocommit=True)
            conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as exc:
            raise SourceError(f"cannot connect to {self.where}: {exc}") from exc
        self._conn = conn
        return conn

    def _query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        conn = self._connection()
        try:
            return conn.execute(sql, params).fetchall()
        except psycopg.errors.UndefinedTable:
            return []  # no shardsync writer has created the tables yet
        except psycopg.Error as exc:
            raise SourceError(f"cannot read {self.where}: {exc}") from exc

    def shards(self) -> list[ShardId]:
        rows = self._query("SELECT shard, divisor, last_seq FROM shard_seqs")
        self._heads = {(int(r), int(d)): int(last) for r, d, last in rows}
        return sorted(self._heads)

    def present(self) -> set[ShardId]:
        return set(self._heads)

    def head(self, shard: ShardId) -> int:
        return self._heads.get(shard, 0)

    def read(self, shard: ShardId, after: int, limit: int) -> list[Record]:
        if self._heads.get(shard, 0) <= after:
            return []
        rows = self._query(READ, (shard[1], shard[0], after, limit))
        return [Record(s, o, t, e, i, a, r, orjson.Fragment(d) if d is not None else None)
                for s, o, t, e, i, a, r, d in rows]

    def statuses(self) -> dict[ShardId, Freshness | None]:
        found: dict[ShardId, Freshness | None] = dict.fromkeys(self._heads)
        for row in self._query(STATUS_SELECT):
            status = Freshness.from_row(row)
            found[(status.remainder, status.divisor)] = status
        return found

    def wait(self, timeout: float, wake_fd: int) -> None:
        conn = self._connection()
        with contextlib.suppress(InterruptedError):
            select.select([conn.fileno(), wake_fd], [], [], timeout)
        # Take the notifications off the socket; their payloads are not needed (shard_seqs says it all).
        pgconn = conn.pgconn
        try:
            pgconn.consume_input()
            while pgconn.notifies() is not None:
                pass
        except psycopg.Error:
            self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def close(self) -> None:
        self._close()
