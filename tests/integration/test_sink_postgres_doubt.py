"""A PostgreSQL connection lost around COMMIT: the retried batch is written exactly once, never twice, never lost.

A proxy between the sink and the session's server cuts the connection at
the COMMIT message, either after forwarding it and reading the server's
answer (the batch committed, the client never heard) or before forwarding
it (the server aborts the open transaction).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from psycopg.conninfo import conninfo_to_dict

from pgserver import pg_query
from polling import wait_until
from shardsync.change import Change, account_id_of
from shardsync.changeseq import Changes, SnapshotRun
from shardsync.sinks import SinkError, SinkUnavailable
from shardsync.sinks.postgres import Doubt, PostgresSink

AT = "2024-05-01T12:00:00.000Z"
COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # a simple-protocol query message: 'Q', int32 length 11, the text


class CommitCutter:
    """A TCP proxy to the server's unix socket that, when armed, cuts the next connection's COMMIT."""

    def __init__(self, unix_path: str) -> None:
        self.unix_path = unix_path
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.mode: str | None = None  # "after": forward COMMIT, swallow its answer; "before": never forward it
        self.cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, mode: str) -> None:
        self.cut.clear()
        self.mode = mode

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.socket(socket.AF_UNIX)
                server.connect(self.unix_path)
                swallow = threading.Event()
                threading.Thread(target=self._upstream, args=(client, server, swallow), daemon=True).start()
                threading.Thread(target=self._downstream, args=(client, server, swallow), daemon=True).start()

    def _upstream(self, client: socket.socket, server: socket.socket, swallow: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.mode is not None and COMMIT in data:
                    mode, self.mode = self.mode, None
                    if mode == "before":
                        self._close(client, server)
                        return
                    swallow.set()
                server.sendall(data)

    def _downstream(self, client: socket.socket, server: socket.socket, swallow: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if swallow.is_set():
                    self._close(client, server)  # the server answered the COMMIT: it is durable, the client never knows
                    return
                client.sendall(data)

    def _close(self, *sockets: socket.socket) -> None:
        self.cut.set()  # before the client can see the cut
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def cutter(pg_dsn: str) -> Iterator[tuple[CommitCutter, str]]:
    params = conninfo_to_dict(pg_dsn)
    proxy = CommitCutter(f"{params['host']}/.s.PGSQL.{params['port']}")
    try:
        yield proxy, f"host=127.0.0.1 port={proxy.port} user={params['user']} dbname={params['dbname']} sslmode=disable"
    finally:
        proxy.close()


def created(ident: int) -> Change:
    entity = {"id": ident, "name": f"acc{ident}"}
    return Change("live", "account", "Created", ident, entity, AT, account_id_of("account", entity))


def old_backend_gone(dsn: str) -> bool:
    """No other session on the test database: the cut one ended and released the writer lock."""
    rows = pg_query(dsn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                         "AND pid <> pg_backend_pid()")
    return rows[0][0] == 0


def log_of(dsn: str) -> list[tuple[Any, ...]]:
    return pg_query(dsn, "SELECT shard_seq, id FROM events ORDER BY shard_seq")


def snapshot_run(*idents: int) -> Changes:
    """Accounts as a snapshot's compact run (changeseq.py): a new Change at every read."""
    run = SnapshotRun("snapshot", AT)
    for ident in idents:
        run.append(("account", ident), orjson.dumps({"id": ident, "name": f"acc{ident}"}).decode(), ident, False)
    return Changes(run)


def cut_and_retry(cutter: tuple[CommitCutter, str], pg_dsn: str, mode: str, *, run: bool = False) -> None:
    proxy, dsn = cutter
    with PostgresSink(dsn, remainder=3, divisor=16) as sink:
        sink.write([created(1)])
        proxy.arm(mode)
        batch: list[Change] | Changes = snapshot_run(2, 3) if run else [created(2), created(3)]
        with pytest.raises(SinkUnavailable, match="in doubt"):
            sink.write(batch)
        assert proxy.cut.is_set()
        wait_until(lambda: old_backend_gone(pg_dsn), 10, "the cut session to end")
        batch.extend([created(4)])  # as the worker's outage does: the held batch first, what came meanwhile after it
        sink.write(batch)
        sink.write([created(5)])
    assert log_of(pg_dsn) == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
    ids = pg_query(pg_dsn, "SELECT id FROM entities ORDER BY id")
    assert [row[0] for row in ids] == [1, 2, 3, 4, 5]


def test_batch_committed_before_the_cut_is_not_logged_twice(cutter: tuple[CommitCutter, str], pg_dsn: str) -> None:
    """The server committed, the answer was lost: the retry writes only what came after it, no change-log repeat."""
    cut_and_retry(cutter, pg_dsn, "after")


def test_a_snapshot_run_committed_before_the_cut_is_not_logged_twice(cutter: tuple[CommitCutter, str],
                                                                     pg_dsn: str) -> None:
    """The same for a snapshot's compact run, whose changes are new objects at every read: its retry is known by
    the batch itself, so what committed is not logged again."""
    cut_and_retry(cutter, pg_dsn, "after", run=True)


def test_batch_cut_before_commit_is_written_in_full(cutter: tuple[CommitCutter, str], pg_dsn: str) -> None:
    """The COMMIT never reached the server: the retry writes the whole batch, nothing is lost."""
    cut_and_retry(cutter, pg_dsn, "before")


def test_doubt_settles_against_the_shard_seq() -> None:
    """Unmoved seq: everything; moved by the batch: the rest; a rebuilt batch: all of it; moved otherwise: an error."""
    held = (created(1), created(2))
    doubt = Doubt(held, len(held), before=10, after=12)
    retry = [*held, created(3)]
    assert doubt.settle(10, retry, "w") == retry
    assert list(doubt.settle(12, retry, "w")) == retry[2:]
    rebuilt = [created(1), created(2)]
    assert doubt.settle(12, rebuilt, "w") == rebuilt
    with pytest.raises(SinkError, match="shard_seq is 13, expected 10 or 12"):
        doubt.settle(13, retry, "w")


def test_a_grown_batch_of_snapshot_runs_settles_by_the_sequence_itself() -> None:
    """The worker's own batch, a snapshot's compact run that makes a new Change at every read, extended after the
    doubt: its committed part is skipped (by the sequence's identity and its count then); an equal rebuilt
    sequence is written whole."""
    run = SnapshotRun("snapshot", "2026-01-01T00:00:00.000Z")
    for n in (1, 2):
        run.append(("account", n), f'{{"id":{n}}}', n, False)
    batch = Changes(run)
    doubt = Doubt(batch, len(batch), before=10, after=12)
    batch.extend([created(3)])
    assert doubt.settle(12, batch, "w") == [created(3)]
    assert doubt.settle(10, batch, "w") is batch
    assert list(doubt.settle(12, Changes(run), "w")) == list(Changes(run))


def test_writer_lock_still_held_at_the_reconnect_is_an_outage(cutter: tuple[CommitCutter, str], pg_dsn: str) -> None:
    """While the lost session still holds the writer lock the retry is SinkUnavailable (retried), not a refusal."""
    import psycopg

    from shardsync.sinks.postgres import shard_lock

    proxy, dsn = cutter
    with PostgresSink(dsn, remainder=3, divisor=16) as sink:
        proxy.arm("after")
        batch = [created(1)]
        with pytest.raises(SinkUnavailable, match="in doubt"):
            sink.write(batch)
        wait_until(lambda: old_backend_gone(pg_dsn), 10, "the cut session to end")
        batch += [created(2)]
        with psycopg.connect(pg_dsn, autocommit=True) as lingering:  # stands in for a session the server has not reaped
            lingering.execute("SELECT pg_advisory_lock(%s)", (shard_lock(3, 16),))
            with pytest.raises(SinkUnavailable, match="writer lock still held"):
                sink.write(batch)
        sink.write(batch)
    assert log_of(pg_dsn) == [(1, 1), (2, 2)]
