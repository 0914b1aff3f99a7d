"""``follow`` over a sqlite state directory: one read-only connection per shard file.

Polling is cheap: ``PRAGMA data_version`` (no table read) says whether
another connection committed since the last look, so an idle shard costs
one pragma per poll.  A file moved away (retired) is drained through its
open connection and then dropped.
"""

from __future__ import annotations

import contextlib
import select
import sqlite3
from urllib.request import pathname2url

import orjson

from shardsync.follow.cursor import ShardId
from shardsync.follow.record import Record
from shardsync.follow.source import SourceError
from shardsync.sinks.base import STATUS_SELECT, Freshness, shard_files


class _Shard:
    __slots__ = ("conn", "more", "path", "version", "with_account")

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn = sqlite3.connect(f"file:{pathname2url(path)}?mode=ro", uri=True, timeout=5, isolation_level=None)
        self.conn.execute("PRAGMA query_only = ON")
        self.with_account = False
        self.version: int | None = None
        self.more = True
        if not self.check_columns():
            self.conn.close()
            # Created a moment ago, its tables not yet committed: taken up at the next poll.
            raise sqlite3.OperationalError(f"{path}: no events table yet")

    def check_columns(self) -> bool:
        """Whether the file has its events table; notes whether it has account_id (an old file has not)."""
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(events)")}
        self.with_account = "account_id" in columns
        return bool(columns)


class SqliteSource:
    """Every ``shard-RRR-of-DDD.sqlite3`` directly in ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._shards: dict[ShardId, _Shard] = {}
        self._gone: set[ShardId] = set()

    def shards(self) -> list[ShardId]:
        files = shard_files(self.path, "sqlite3")
        for shard, path in files.items():
            if shard not in self._shards:
                try:
                    self._shards[shard] = _Shard(path)
                except sqlite3.Error:
                    continue  # being created right now: next poll
        # A vanished file stays readable through its connection until it is drained.
        self._gone = set(self._shards) - set(files)
        return sorted(self._shards)

    def present(self) -> set[ShardId]:
        return set(self._shards)

    def head(self, shard: ShardId) -> int:
        row = self._shards[shard].conn.execute("SELECT max(seq) FROM events").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def read(self, shard: ShardId, after: int, limit: int) -> list[Record]:
        entry = self._shards[shard]
        try:
            version = entry.conn.execute("PRAGMA data_version").fetchone()[0]
            if version == entry.version and not entry.more:
                if shard in self._gone:
                    self._drop(shard)
                return []
            if not entry.with_account:
                entry.check_columns()  # its worker may have upgraded it meanwhile
            account = "account_id" if entry.with_account else "NULL"
            rows = entry.conn.execute(
                f"SELECT seq, origin, entity_type, event_type, id, {account}, received_at, data "  # noqa: S608
                "FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise SourceError(f"cannot read {entry.path}: {exc}") from exc
        entry.version, entry.more = version, len(rows) >= limit
        if not rows and shard in self._gone:
            self._drop(shard)
        return [Record(s, o, t, e, i, a, r, _fragment(d)) for s, o, t, e, i, a, r, d in rows]

    def statuses(self) -> dict[ShardId, Freshness | None]:
        found: dict[ShardId, Freshness | None] = {}
        for shard, entry in self._shards.items():
            try:
                row = entry.conn.execute(STATUS_SELECT).fetchone()
            except sqlite3.Error:
                row = None  # a file from before shard_status
            found[shard] = Freshness.from_row(row) if row else None
        return found

    def wait(self, timeout: float, wake_fd: int) -> None:
        select.select([wake_fd], [], [], timeout)

    def _drop(self, shard: ShardId) -> None:
        entry = self._shards.pop(shard)
        self._gone.discard(shard)
        with contextlib.suppress(sqlite3.Error):
            entry.conn.close()

    def close(self) -> None:
        for shard in list(self._shards):
            self._drop(shard)


def _fragment(data: str | None) -> object:
    return orjson.Fragment(data) if data is not None else None
