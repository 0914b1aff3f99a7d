"""The embedded default sink: one SQLite file per shard, WAL, one writer.

Durability: ``journal_mode=WAL`` with ``synchronous=NORMAL``. A commit appends
the transaction to the WAL with ``write()``; the WAL is fsynced by the sink's
checkpointer thread (``sqlite_checkpoint``) within a second, and at its
checkpoints, never inside a commit; a commit fsyncs only when it starts the WAL
over, once per few MiB of log. Once ``write()`` has
returned the data sits in the kernel's page cache, so it survives any crash of this process (SIGKILL included), which
is the failure model the worker and supervisor are built for. Only an OS crash
or power loss can lose the last commits, and even then the database stays
consistent; the worker's resync on start then restores what the server has.
``synchronous=FULL`` would add an fsync per batch for that case alone.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson

from shardsync.change import Change
from shardsync.logs import get_logger
from shardsync.sinks import sqlite_schema
from shardsync.sinks.base import (
    PRUNE_BATCH,
    STATUS_SELECT,
    Freshness,
    Row,
    Sink,
    SinkError,
    batch_rows,
    cutoff,
    ensure_dir,
    lock_exclusive,
    open_file,
    refuse_symlinks,
    retired_status,
    shard_file_name,
)
from shardsync.sinks.retired import move_to_retired
from shardsync.sinks.sqlite_checkpoint import Checkpointer
from shardsync.sinks.sqlite_gate import Gate

UPSERT = (
    "INSERT INTO entities (entity_type, id, account_id, data, updated_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (entity_type, id) DO UPDATE SET "
    "account_id = excluded.account_id, data = excluded.data, updated_at = excluded.updated_at"
)
DELETE = "DELETE FROM entities WHERE entity_type = ? AND id = ?"
APPEND = (
    "INSERT INTO events (received_at, origin, entity_type, event_type, id, account_id, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
STATUS = (
    "INSERT INTO shard_status (remainder, divisor, expression, state, snapshot_at, last_event_at, last_commit_at, "
    "session) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (divisor, remainder) DO UPDATE SET "
    "expression = excluded.expression, state = excluded.state, snapshot_at = excluded.snapshot_at, "
    "last_event_at = excluded.last_event_at, last_commit_at = excluded.last_commit_at, session = excluded.session"
)
# By received_at through its index (a scan by seq would read the whole log when
# nothing is due), and never the newest row: seq is the rowid, and an emptied
# table would hand out seq 1 again, behind every consumer's cursor.
PRUNE = (
    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE received_at < ? ORDER BY received_at LIMIT ?) "
    "AND seq < (SELECT max(seq) FROM events)"
)

#: Builds the checkpointer of a shard file (None: no checkpoints until close).
Checkpoints = Callable[[str], Checkpointer] | None

#: Changes serialised and executed at a time inside one batch's transaction (bounds a 1M-change snapshot's rows).
WRITE_PIECE = 20_000

#: SQLite's automatic checkpoint interval (pages) if the checkpointer thread is lost.
FALLBACK_CHECKPOINT_PAGES = 4096

log = get_logger("shardsync.sink")

#: Milliseconds to wait for a reader's lock (e.g. an operator's sqlite3 shell
#: holding a checkpoint) before failing the batch; the worker then retries.
BUSY_TIMEOUT_MS = 5000



class SqliteSink(Sink):
    """``<path>/shard-RRR-of-DDD.sqlite3`` with an flock'd ``.lock`` sidecar for single-writer.

    The change-log cursor is ``events.seq``: one writer per file, so seq
    order is commit order and a reader polling ``seq > last`` misses nothing.
    """

    def __init__(self, path: str, *, remainder: int, divisor: int, checkpoints: Checkpoints = Checkpointer) -> None:
        self.remainder, self.divisor = remainder, divisor
        self.file = os.path.join(path, shard_file_name(remainder, divisor, "sqlite3"))
        #: Its thread is started by the first write, in the process that writes (a worker is forked
        #: without threads, and the parent opens sinks only to retire them).
        self.checkpointer = None if checkpoints is None else checkpoints(self.file)
        # Held around each write transaction (a TRUNCATE checkpoint holds it to keep the writer off).
        self._gate = Gate() if self.checkpointer is None else self.checkpointer.gate
        self._fallback = False
        ensure_dir("sqlite", path)
        # The lock lives in a sidecar because SQLite itself takes POSIX locks on
        # the database file; an flock there would work on Linux but mixing the
        # two on one file is fragile (NFS, other platforms).
        self._lock_fd: int | None = open_file("sqlite", self.file + ".lock", os.O_RDWR)
        try:
            lock_exclusive("sqlite", self._lock_fd, self.file)
            # Created here rather than by SQLite so the mode is ours; SQLite
            # gives the -wal/-shm files the database file's mode.  SQLite opens
            # (and follows) these paths itself: a symlink planted at any of them
            # is refused first.
            os.close(open_file("sqlite", self.file, os.O_RDWR))
            refuse_symlinks("sqlite", self.file + "-wal", self.file + "-shm")
            self._conn: sqlite3.Connection | None = self._connect()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"SqliteSink({self.file!r})"

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: the module must not open transactions
            # behind our back; write() issues BEGIN IMMEDIATE/COMMIT itself.
            # check_same_thread=False: the worker may open the sink on one
            # thread and write from its session thread; it never shares it.
            conn = sqlite3.connect(self.file, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise SinkError(f"sqlite sink: cannot open {self.file}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise SinkError(f"sqlite sink: {self.file}: cannot enable WAL (got {mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            # SQLite's automatic checkpoint runs inside the commit that crosses
            # its threshold (tens of ms at the p99); the checkpointer copies instead.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            sqlite_schema.prepare(conn, self.file)
        except sqlite3.Error as exc:
            conn.close()
            raise SinkError(f"sqlite sink: cannot initialise {self.file}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._lock_fd is None:
            raise SinkError(f"sqlite sink: {self.file} is closed")
        if self._conn is None:
            # A failed rollback left no usable connection; the writer lock is
            # still ours, so reconnecting is safe and saves the worker a reopen.
            self._conn = self._connect()
        return self._conn

    def load(self) -> Iterator[tuple[str, int, dict[str, Any]]]:
        for entity_type, ident, _, entity in self._entities():
            yield entity_type, ident, entity

    def preload(self) -> Iterator[tuple[str, int, dict[str, Any] | str]]:
        # The rows' own text (as the mirror would write it), each checked to parse all the same.
        for entity_type, ident, data, _ in self._entities():
            yield entity_type, ident, data

    def _entities(self) -> Iterator[tuple[str, int, str, dict[str, Any]]]:
        conn = self._connection()
        try:
            # fetchall, not a lazy cursor: a half-read SELECT keeps a read
            # transaction open and a following BEGIN IMMEDIATE would fail.
            rows = conn.execute("SELECT entity_type, id, data FROM entities").fetchall()
        except sqlite3.Error as exc:
            raise SinkError(f"sqlite sink: cannot read {self.file}: {exc}") from exc
        for entity_type, ident, data in rows:
            try:
                entity = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise SinkError(f"sqlite sink: {self.file}: corrupt data for {entity_type} id={ident}: {exc}") from exc
            if type(entity) is not dict:
                raise SinkError(f"sqlite sink: {self.file}: corrupt data for {entity_type} id={ident}: not an object")
            yield entity_type, ident, data, entity

    def write(self, changes: Sequence[Change], freshness: Freshness | None = None) -> None:
        if not changes:
            if freshness is not None:
                self.mark(freshness)
            return
        if freshness is not None:
            self.check_freshness(freshness)
        # Serialising first means a bad entity fails the batch before any SQL runs; a batch bigger than
        # one piece (a snapshot's) is serialised and executed piece by piece in its one transaction, in
        # order (each piece's rows are each key's last state in it), so its rows never all exist at once.
        runs, events = self._rows(changes[:WRITE_PIECE])
        conn = self._connection()
        gate = self._writing()
        try:
            with gate:
                conn.execute("BEGIN IMMEDIATE")
                for start in range(0, len(changes), WRITE_PIECE):
                    if start:
                        runs, events = self._rows(changes[start:start + WRITE_PIECE])
                    for statement, rows in runs:
                        conn.executemany(statement, rows)
                    conn.executemany(APPEND, events)
                    runs = events = []
                if freshness is not None:
                    conn.execute(STATUS, freshness.row())
                conn.execute("COMMIT")
        except Exception as exc:
            self._rollback(conn)
            raise SinkError(f"sqlite sink: {self.file}: batch of {len(changes)} not written: {exc}") from exc
        finally:
            self._wrote()

    def mark(self, freshness: Freshness) -> None:
        self.check_freshness(freshness)
        conn = self._connection()
        try:
            with self._writing():
                conn.execute(STATUS, freshness.row())
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise SinkError(f"sqlite sink: {self.file}: status not written: {exc}") from exc
        finally:
            self._wrote()

    def status(self) -> Freshness | None:
        """The file's status row, if one was written."""
        try:
            row = self._connection().execute(STATUS_SELECT).fetchone()
        except sqlite3.Error as exc:
            raise SinkError(f"sqlite sink: cannot read the status of {self.file}: {exc}") from exc
        return None if row is None else Freshness.from_row(row)

    def prune(self, retention: float, *, now: float, limit: int = PRUNE_BATCH) -> int:
        before = cutoff(retention, now)
        if before is None:
            return 0
        conn = self._connection()
        try:
            with self._writing():
                removed = conn.execute(PRUNE, (before, limit)).rowcount
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise SinkError(f"sqlite sink: {self.file}: prune failed: {exc}") from exc
        finally:
            self._wrote()
        return max(0, removed)

    def _writing(self) -> Gate:
        """The gate to hold around a write transaction, starting the checkpointer with the first one."""
        if self.checkpointer is not None and not self.checkpointer.started:
            try:
                self.checkpointer.start()
            except RuntimeError as exc:  # no thread to be had: _wrote falls back
                log.error("sqlite_checkpointer_not_started", file=self.file, error=str(exc))
        return self._gate

    def _wrote(self) -> None:
        # After a failed transaction too: a rollback may leave frames behind.
        checkpointer = self.checkpointer
        if checkpointer is None:
            return
        checkpointer.committed()
        if not checkpointer.running and not self._fallback and self._conn is not None:
            # The thread could not start or is gone: SQLite's own checkpoints,
            # inside commits, still beat a WAL that grows without end.
            self._fallback = True
            log.error("sqlite_checkpointer_gone", file=self.file, fallback_pages=FALLBACK_CHECKPOINT_PAGES)
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute(f"PRAGMA wal_autocheckpoint = {FALLBACK_CHECKPOINT_PAGES}")

    def _rollback(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            # The connection is unusable (closed, I/O error): drop it and let
            # the next call reconnect. SQLite rolls back an unfinished
            # transaction from the WAL on the next open, so nothing partial
            # can become visible.
            self._conn = None
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _rows(self, changes: Sequence[Change]) -> tuple[list[tuple[str, list[Row]]], list[Row]]:
        return batch_rows("sqlite", self.file, changes, upsert=UPSERT, delete=DELETE)

    def close(self) -> None:
        checkpointer = getattr(self, "checkpointer", None)
        if checkpointer is not None:
            # Before the connection closes: the last connection's close copies the WAL itself.
            checkpointer.stop()
        conn, self._conn = getattr(self, "_conn", None), None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            # Closing the descriptor releases the flock.
            os.close(fd)


def retire(path: str, *, remainder: int, divisor: int) -> str | None:
    """Mark the shard file ``retired`` and move it (and its WAL, shm, lock) to ``<path>/retired/``.

    Takes the writer lock, so it fails (SinkError) while a worker still
    writes the shard; returns the directory the files went to, or None when
    the shard has no file.
    """
    name = shard_file_name(remainder, divisor, "sqlite3")
    if not os.path.exists(os.path.join(path, name)):
        return None
    # No checkpointer: the parent retires shards and must stay single-threaded;
    # closing the connection below copies the WAL into the file.
    sink = SqliteSink(path, remainder=remainder, divisor=divisor, checkpoints=None)
    try:
        sink.mark(retired_status(sink.status(), remainder, divisor))
        conn, sink._conn = sink._conn, None
        if conn is not None:
            # The last connection's close checkpoints the WAL into the file.
            conn.close()
        # Moved while the lock is still held: no writer can open the shard in between.
        return move_to_retired("sqlite", path, [name + suffix for suffix in ("", "-wal", "-shm", ".lock")])
    finally:
        sink.close()
