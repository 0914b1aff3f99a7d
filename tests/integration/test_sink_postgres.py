"""The postgres sink against a throwaway PostgreSQL 15 server started for this session."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shardsync.change import Change
from shardsync.sinks import SinkError, open_sink
from shardsync.sinks.base import Sink
from shardsync.sinks.postgres import redact

PG_BIN = Path(os.environ.get("SHARDSYNC_PG_BIN", "/usr/lib/postgresql/15/bin"))
AT = "2024-05-01T12:00:00.000Z"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    """A private server on a unix socket only; yields a DSN for its maintenance database."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).exists():
            pytest.fail(f"PostgreSQL binaries missing: {PG_BIN / tool} (install postgresql-15 or set SHARDSYNC_PG_BIN)")
    # initdb refuses to run as root; under root the server runs as the postgres user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    # Directly under /tmp: short enough for the socket path, traversable by postgres.
    base = Path(tempfile.mkdtemp(prefix="shardsync-pg-"))
    if as_user:
        shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", free_port()

    def run(*argv: str) -> None:
        done = subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = base / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            pytest.fail(f"{argv[0]} failed ({done.returncode}): {done.stderr or done.stdout}\n{tail}")

    run(str(PG_BIN / "initdb"), "-D", str(data), "-U", "shardsync", "-A", "trust", "-E", "UTF8", "--no-sync")
    options = f"-k {base} -p {port} -c listen_addresses='' -c fsync=off"
    run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o", options, "start")
    try:
        yield f"host={base} port={port} user=shardsync dbname=postgres"
    finally:
        run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


_databases = itertools.count()


@pytest.fixture
def dsn(server: str) -> str:
    """A fresh, empty database per test so tests never see each other's rows."""
    name = f"t{next(_databases)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.replace("dbname=postgres", f"dbname={name}")


def change(event_type: str, entity: Any, *, entity_type: str = "account", origin: str = "live") -> Change:
    ident = entity.get("id") if isinstance(entity, dict) and origin != "system" else None
    return Change(origin, entity_type, event_type, ident, entity, AT)  # type: ignore[arg-type]


def account(ident: int, **fields: Any) -> dict[str, Any]:
    return {"id": ident, "name": f"acc{ident}", **fields}


def open_(dsn: str, remainder: int = 3, divisor: int = 16) -> Sink:
    return open_sink("postgres", dsn=dsn, remainder=remainder, divisor=divisor)


def state(sink: Sink) -> dict[tuple[str, int], dict[str, Any]]:
    return {(entity_type, ident): entity for entity_type, ident, entity in sink.load()}


def query(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def test_round_trip_and_reopen(dsn: str) -> None:
    """Upserts and deletes apply in order, system events leave entities alone, and a reopen loads the same."""
    with open_(dsn) as sink:
        sink.write([change("Created", account(1)), change("Created", account(2)), change("Deleted", account(9))])
        sink.write(
            [
                change("Updated", account(1, name="x")),
                change("Deleted", account(2)),
                change("Event", {"id": 1}, entity_type="alertSignal", origin="system"),
            ]
        )
        expected = {("account", 1): account(1, name="x")}
        assert state(sink) == expected
    with open_(dsn) as again:
        assert state(again) == expected


def test_order_and_repeats_within_a_batch(dsn: str) -> None:
    """Repeated upserts of one key in a batch keep the last, and delete/re-create keeps the order."""
    with open_(dsn) as sink:
        sink.write(
            [
                change("Created", account(5)),
                change("Updated", account(5, name="second")),
                change("Deleted", account(5)),
                change("Created", account(5, name="back")),
                change("Updated", account(6)),
                change("Updated", account(6, name="last")),
            ]
        )
        assert state(sink) == {("account", 5): account(5, name="back"), ("account", 6): account(6, name="last")}
        assert query(dsn, "SELECT count(*) FROM events") == [(6,)]


def test_schema_has_shard_column_and_keys(dsn: str) -> None:
    """Both tables carry the sqlite columns plus shard, keyed by (shard, entity_type, id) and seq."""
    open_(dsn).close()
    columns = query(
        dsn,
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_name IN ('entities', 'events') ORDER BY table_name, ordinal_position",
    )
    assert columns == [
        ("entities", "shard"),
        ("entities", "entity_type"),
        ("entities", "id"),
        ("entities", "account_id"),
        ("entities", "data"),
        ("entities", "updated_at"),
        ("events", "seq"),
        ("events", "shard"),
        ("events", "received_at"),
        ("events", "origin"),
        ("events", "entity_type"),
        ("events", "event_type"),
        ("events", "id"),
        ("events", "data"),
    ]
    keys = query(
        dsn,
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'entities'::regclass AND i.indisprimary "
        "ORDER BY array_position(i.indkey, a.attnum)",
    )
    assert keys == [("shard",), ("entity_type",), ("id",)]


def test_rows_record_account_and_event_log(dsn: str) -> None:
    """entities holds account_id/updated_at, events logs every change of the shard in order."""
    with open_(dsn) as sink:
        sink.write(
            [
                change("Created", {"id": 4, "accountId": 7}, entity_type="order"),
                change("Event", {"k": 1}, entity_type="alertSignal", origin="system"),
            ]
        )
    assert query(dsn, "SELECT shard, entity_type, id, account_id, data::text, updated_at FROM entities") == [
        (3, "order", 4, 7, '{"id":4,"accountId":7}', AT)
    ]
    assert query(
        dsn, "SELECT seq, shard, origin, entity_type, event_type, id, data::text FROM events ORDER BY seq"
    ) == [
        (1, 3, "live", "order", "Created", 4, '{"id":4,"accountId":7}'),
        (2, 3, "system", "alertSignal", "Event", None, '{"k":1}'),
    ]


def test_shards_share_tables_but_not_rows(dsn: str) -> None:
    """Two shards in one database each load only their own entities."""
    with open_(dsn, remainder=0) as zero, open_(dsn, remainder=1) as one:
        zero.write([change("Created", account(10))])
        one.write([change("Created", account(11))])
        assert set(state(zero)) == {("account", 10)}
        assert set(state(one)) == {("account", 11)}


def test_failed_batch_leaves_nothing_and_sink_stays_usable(dsn: str) -> None:
    """A batch failing inside the transaction (or before it) rolls back entirely; later batches succeed."""
    with open_(dsn) as sink:
        sink.write([change("Created", account(1))])
        with pytest.raises(SinkError, match="cannot serialize"):
            sink.write([change("Updated", account(1, name="lost")), change("Created", account(2, x=object()))])
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected'; END $$"
            )
            conn.execute(
                "CREATE TRIGGER boom BEFORE INSERT ON events FOR EACH ROW WHEN (NEW.id = 666) EXECUTE FUNCTION boom()"
            )
            batch = [change("Updated", account(1, name="x")), change("Created", account(666))]
            with pytest.raises(SinkError, match="batch of 2 not written: injected"):
                sink.write(batch)
            assert state(sink) == {("account", 1): account(1)}
            assert query(dsn, "SELECT count(*) FROM events") == [(1,)]
            conn.execute("DROP TRIGGER boom ON events")
        sink.write(batch)
        assert set(state(sink)) == {("account", 1), ("account", 666)}


def test_second_writer_for_a_shard_is_refused(dsn: str) -> None:
    """Another session cannot open the same shard while a writer holds it, and can once it closed."""
    sink = open_(dsn)
    with pytest.raises(SinkError, match="is in use by another process"):
        open_(dsn)
    sink.close()
    sink.close()
    open_(dsn).close()


def test_reconnects_after_the_server_kills_the_session(dsn: str) -> None:
    """A terminated backend fails the batch with SinkError and the next write reconnects."""
    with open_(dsn) as sink:
        sink.write([change("Created", account(1))])
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(SinkError, match="not written"):
            sink.write([change("Created", account(2))])
        sink.write([change("Created", account(3))])
        assert set(state(sink)) == {("account", 1), ("account", 3)}


def test_password_never_appears_in_repr_or_errors(dsn: str, server: str) -> None:
    """The DSN's password is stripped from the sink's repr and from connection errors."""
    with open_(f"{dsn} password=hunter2") as sink:
        assert "hunter2" not in repr(sink)
        assert "user=shardsync" in repr(sink)
    bad = server.replace("dbname=postgres", "dbname=nope") + " password=hunter2"
    with pytest.raises(SinkError) as error:
        open_(bad)
    assert "hunter2" not in str(error.value)
    assert "dbname=nope" in str(error.value)
    assert redact("postgresql://u:hunter2@db.example/x") == "user=u dbname=x host=db.example"
    assert "hunter2" not in redact("this is not a dsn password=hunter2 '")
