"""The postgres sink against a throwaway PostgreSQL 15 server started for this session."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import psycopg
import pytest

from shardsync.change import Change, account_id_of
from shardsync.sinks import Freshness, SinkError, SinkState, SinkUnavailable, open_sink, retire
from shardsync.sinks.base import Sink
from shardsync.sinks.postgres import CHANNEL, PostgresSink, redact

AT = "2024-05-01T12:00:00.000Z"


@pytest.fixture
def dsn(pg_dsn: str) -> str:
    return pg_dsn


@pytest.fixture
def server(pg_server: str) -> str:
    return pg_server


def change(event_type: str, entity: Any, *, entity_type: str = "account", origin: str = "live") -> Change:
    ident = entity.get("id") if isinstance(entity, dict) and origin != "system" else None
    account = account_id_of(entity_type, entity)
    return Change(origin, entity_type, event_type, ident, entity, AT, account)  # type: ignore[arg-type]


def account(ident: int, **fields: Any) -> dict[str, Any]:
    return {"id": ident, "name": f"acc{ident}", **fields}


def open_(dsn: str, remainder: int = 3, divisor: int = 16) -> Sink:
    return open_sink("postgres", dsn=dsn, remainder=remainder, divisor=divisor)


def state(sink: Sink) -> dict[tuple[str, int], dict[str, Any]]:
    return {(entity_type, ident): entity for entity_type, ident, entity in sink.load()}


def query(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def run(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


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


def test_schema_has_shard_columns_and_keys(dsn: str) -> None:
    """The tables carry divisor and shard, are keyed by them, and times/data are timestamptz/jsonb."""
    open_(dsn).close()
    columns = query(
        dsn,
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_name IN ('entities', 'events') ORDER BY table_name, ordinal_position",
    )
    assert columns == [
        ("entities", "shard", "integer"),
        ("entities", "entity_type", "text"),
        ("entities", "id", "bigint"),
        ("entities", "account_id", "bigint"),
        ("entities", "data", "jsonb"),
        ("entities", "updated_at", "timestamp with time zone"),
        ("entities", "divisor", "integer"),
        ("events", "seq", "bigint"),
        ("events", "shard", "integer"),
        ("events", "received_at", "timestamp with time zone"),
        ("events", "origin", "text"),
        ("events", "entity_type", "text"),
        ("events", "event_type", "text"),
        ("events", "id", "bigint"),
        ("events", "data", "jsonb"),
        ("events", "divisor", "integer"),
        ("events", "shard_seq", "bigint"),
        ("events", "account_id", "bigint"),
    ]
    keys = query(
        dsn,
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'entities'::regclass AND i.indisprimary "
        "ORDER BY array_position(i.indkey, a.attnum)",
    )
    assert keys == [("divisor",), ("shard",), ("entity_type",), ("id",)]


def test_rows_record_account_and_event_log(dsn: str) -> None:
    """entities holds account_id/updated_at, events logs every change of the shard in order with its account."""
    with open_(dsn) as sink:
        sink.write(
            [
                change("Created", {"id": 4, "accountId": 7}, entity_type="order"),
                change("Event", {"k": 1}, entity_type="alertSignal", origin="system"),
            ]
        )
    assert query(
        dsn, "SELECT divisor, shard, entity_type, id, account_id, data::text, updated_at = %s::timestamptz "
        "FROM entities".replace("%s", f"'{AT}'")
    ) == [(16, 3, "order", 4, 7, '{"id": 4, "accountId": 7}', True)]
    assert query(
        dsn, "SELECT divisor, shard, shard_seq, origin, entity_type, event_type, id, account_id, data::text "
        "FROM events ORDER BY seq"
    ) == [
        (16, 3, 1, "live", "order", "Created", 4, 7, '{"id": 4, "accountId": 7}'),
        (16, 3, 2, "system", "alertSignal", "Event", None, None, '{"k": 1}'),
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
    """A terminated backend fails the batch with SinkUnavailable and the next write reconnects and writes its own."""
    with open_(dsn) as sink:
        sink.write([change("Created", account(1))])
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(SinkUnavailable, match="in doubt"):
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


# --- freshness, cursor, notifications, retention, retirement, upgrade ----------------

LIVE = Freshness(3, 16, "modAccountId", SinkState.LIVE, "2024-05-01T11:59:00.000Z", AT, AT, "s1")


def test_status_row_commits_with_the_batch_and_alone(dsn: str) -> None:
    """write(changes, freshness) and mark() keep one timestamptz row per (divisor, remainder), read back as written."""
    with open_(dsn) as sink:
        assert isinstance(sink, PostgresSink)
        assert sink.status() is None
        sink.write([change("Created", account(1))], LIVE)
        assert sink.status() == LIVE
        resyncing = dataclasses.replace(LIVE, state=SinkState.RESYNCING, session="s2", snapshot_at=None)
        sink.mark(resyncing)
        assert sink.status() == resyncing
        with pytest.raises(SinkError, match="given to the sink of 3/16"):
            sink.mark(dataclasses.replace(LIVE, divisor=8))
    assert query(dsn, "SELECT remainder, divisor, state, pg_typeof(last_event_at)::text FROM shard_status") == [
        (3, 16, "resyncing", "timestamp with time zone")
    ]


def test_failed_batch_keeps_the_previous_status_and_seq(dsn: str) -> None:
    """A batch failing in its transaction leaves neither its status row nor a gap in shard_seq."""
    with open_(dsn) as sink:
        assert isinstance(sink, PostgresSink)
        sink.write([change("Created", account(1))], LIVE)
        with pytest.raises(SinkError, match="cannot serialize"):
            sink.write([change("Created", account(2, x=object()))], dataclasses.replace(LIVE, session="lost"))
        run(dsn, "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'x'; END $$")
        run(dsn, "CREATE TRIGGER boom BEFORE INSERT ON events FOR EACH ROW WHEN (NEW.id = 666) "
                   "EXECUTE FUNCTION boom()")
        with pytest.raises(SinkError, match="not written"):
            sink.write([change("Created", account(3)), change("Created", account(666))],
                       dataclasses.replace(LIVE, session="lost"))
        run(dsn, "DROP TRIGGER boom ON events")
        sink.write([change("Created", account(4))])
        assert sink.status() == LIVE
    assert query(dsn, "SELECT shard_seq, id FROM events ORDER BY shard_seq") == [(1, 1), (2, 4)]
    assert query(dsn, "SELECT last_seq FROM shard_seqs") == [(2,)]


def test_shard_seq_is_per_shard_gap_free_and_notified_once_per_batch(dsn: str) -> None:
    """Each shard numbers its events 1, 2, ... in commit order, and every batch sends one NOTIFY at commit."""
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        with open_(dsn, remainder=0, divisor=4) as zero, open_(dsn, remainder=1, divisor=4) as one:
            zero.write([change("Created", account(4)), change("Created", account(8))])
            one.write([change("Created", account(1))])
            zero.write([change("Updated", account(4, name="x"))])
        notes = [orjson.loads(n.payload) for n in listener.notifies(timeout=2.0, stop_after=3)]
    assert notes == [
        {"divisor": 4, "remainder": 0, "seq": 2},
        {"divisor": 4, "remainder": 1, "seq": 1},
        {"divisor": 4, "remainder": 0, "seq": 3},
    ]
    assert query(dsn, "SELECT shard, shard_seq, id FROM events ORDER BY shard, shard_seq") == [
        (0, 1, 4), (0, 2, 8), (0, 3, 4), (1, 1, 1)
    ]


def test_only_a_state_change_notifies_on_mark(dsn: str) -> None:
    """Heartbeat marks with an unchanged state are silent; a state change wakes followers."""
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        with open_(dsn) as sink:
            sink.mark(LIVE)
            sink.mark(dataclasses.replace(LIVE, last_event_at="2024-05-01T12:00:05.000Z"))
            sink.mark(dataclasses.replace(LIVE, state=SinkState.BACKOFF))
        notes = [orjson.loads(n.payload) for n in listener.notifies(timeout=1.0)]
    assert notes == [{"divisor": 16, "remainder": 3, "seq": 0}] * 2


def test_two_divisors_side_by_side(dsn: str) -> None:
    """Shard 1 of 2 and shard 1 of 4 are different writers with their own entities, events and status."""
    with open_(dsn, remainder=1, divisor=2) as half, open_(dsn, remainder=1, divisor=4) as quarter:
        half.write([change("Created", account(5))])
        quarter.write([change("Created", account(5, name="q")), change("Created", account(9))])
        assert state(half) == {("account", 5): account(5)}
        assert set(state(quarter)) == {("account", 5), ("account", 9)}
        with pytest.raises(SinkError, match="in use"):
            open_(dsn, remainder=1, divisor=2)
    assert query(dsn, "SELECT divisor, shard, shard_seq FROM events ORDER BY divisor, shard_seq") == [
        (2, 1, 1), (4, 1, 1), (4, 1, 2)
    ]


def test_prune_removes_old_events_of_its_own_shard_only(dsn: str) -> None:
    """prune() deletes this shard's events older than the retention in batches; other shards and entities stay."""
    old, new = "2024-05-01T00:00:00.000Z", "2024-05-08T00:00:00.000Z"
    now = 1715126400.0  # 2024-05-08T00:00:00Z
    with open_(dsn, remainder=0, divisor=2) as zero, open_(dsn, remainder=1, divisor=2) as one:
        zero.write([Change("live", "account", "Created", n, {"id": n}, old, n) for n in range(5)])
        zero.write([Change("live", "account", "Updated", 0, {"id": 0, "x": 1}, new, 0)])
        one.write([Change("live", "account", "Created", 1, {"id": 1}, old, 1)])
        removed = []
        while count := zero.prune(86400.0, now=now, limit=2):
            removed.append(count)
        assert removed == [2, 2, 1]
        assert zero.prune(0.0, now=now) == 0
        assert len(state(zero)) == 5
    assert query(dsn, "SELECT shard, shard_seq FROM events ORDER BY shard, shard_seq") == [(0, 6), (1, 1)]


def test_retire_marks_the_shard_and_keeps_its_rows(dsn: str) -> None:
    """retire() sets state retired (keeping the last row's times), refuses while a writer holds the shard."""
    with open_(dsn) as sink:
        sink.write([change("Created", account(1))], LIVE)
        with pytest.raises(SinkError, match="in use"):
            retire("postgres", dsn=dsn, remainder=3, divisor=16)
    retire("postgres", dsn=dsn, remainder=3, divisor=16)
    retire("postgres", dsn=dsn, remainder=5, divisor=16)
    assert query(dsn, "SELECT remainder, state, session FROM shard_status ORDER BY remainder") == [
        (3, "retired", "s1"), (5, "retired", "")
    ]
    assert query(dsn, "SELECT count(*) FROM entities") == [(1,)]


def test_retiring_a_replaced_shard_drops_its_state_and_keeps_its_change_log(dsn: str) -> None:
    """retire(replaced=True), a resharding's old shard once its new shards are live: its entities rows go in the
    transaction that marks it retired, its change log stays for followers; other shards' rows are untouched."""
    with open_(dsn) as sink:
        sink.write([change("Created", account(1)), change("Created", account(2))], LIVE)
    with open_(dsn, remainder=1, divisor=8) as other:
        other.write([change("Created", account(9))], dataclasses.replace(LIVE, remainder=1, divisor=8))
    retire("postgres", dsn=dsn, remainder=3, divisor=16, replaced=True)
    assert query(dsn, "SELECT divisor, shard FROM entities") == [(8, 1)]
    assert query(dsn, "SELECT divisor, shard, count(*) FROM events GROUP BY divisor, shard ORDER BY divisor") == [
        (8, 1, 1), (16, 3, 2)]
    assert query(dsn, "SELECT divisor, remainder, state FROM shard_status ORDER BY divisor") == [
        (8, 1, "live"), (16, 3, "retired")]


#: sinks/postgres.py's SCHEMA before schema_version existed, verbatim.
POSTGRES_V1 = (
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


def columns_of(dsn: str) -> list[tuple[Any, ...]]:
    return query(dsn, "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
                      "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position")


def test_v1_schema_is_upgraded_in_place(dsn: str, server: str) -> None:
    """Yesterday's tables keep their rows and gain divisor, per-shard seq in old commit order, timestamptz, jsonb,
    account ids for fills and the new tables; a second open is a no-op; the result equals a fresh schema."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in POSTGRES_V1:
            conn.execute(statement)
        conn.execute("INSERT INTO entities VALUES (0, 'order', 10, 7, '{\"id\":10,\"accountId\":7}', %s), "
                     "(0, 'fill', 1, NULL, '{\"id\":1,\"orderId\":10}', %s), "
                     "(1, 'account', 9, 9, '{\"id\":9}', %s)", (AT, AT, AT))
        # Interleaved commits of two shards: global seq 1..4 -> shard_seq per shard in that order.
        for shard, ident in ((0, 10), (1, 9), (0, 1), (1, 9)):
            conn.execute("INSERT INTO events (shard, received_at, origin, entity_type, event_type, id, data) "
                         "VALUES (%s, %s, 'live', 'x', 'Created', %s, '{}')", (shard, AT, ident))
    with open_(dsn, remainder=0, divisor=2) as sink:
        assert set(state(sink)) == {("order", 10), ("fill", 1)}
        sink.write([change("Created", {"id": 2, "orderId": 10}, entity_type="fill")])
    assert query(dsn, "SELECT version FROM schema_version") == [(2,)]
    assert query(dsn, "SELECT seq, divisor, shard, shard_seq, received_at = %s::timestamptz FROM events "
                      "ORDER BY seq".replace("%s", f"'{AT}'")) == [
        (1, 2, 0, 1, True), (2, 2, 1, 1, True), (3, 2, 0, 2, True), (4, 2, 1, 2, True), (5, 2, 0, 3, True)
    ]
    assert query(dsn, "SELECT divisor, shard, last_seq FROM shard_seqs ORDER BY shard") == [(2, 0, 3), (2, 1, 2)]
    assert query(dsn, "SELECT entity_type, id, account_id FROM entities ORDER BY entity_type, id") == [
        ("account", 9, 9), ("fill", 1, 7), ("fill", 2, None), ("order", 10, 7)
    ]
    upgraded = columns_of(dsn)
    with open_(dsn, remainder=0, divisor=2):
        pass
    assert columns_of(dsn) == upgraded
    assert query(dsn, "SELECT count(*) FROM events") == [(5,)]
    fresh = server.replace("dbname=postgres", "dbname=fresh_schema")
    run(server, "CREATE DATABASE fresh_schema")
    open_(fresh).close()
    assert columns_of(fresh) == upgraded


def test_rejected_changes_are_logged_and_never_applied(dsn: str) -> None:
    """origin=rejected rows land in events (with their account) and never touch entities."""
    with open_(dsn) as sink:
        sink.write([change("Created", account(1))])
        sink.write([Change("rejected", "account", "Updated", 1, {"id": 1, "bad": True}, AT, 1),
                    Change("rejected", "position", "Created", None, [1, 2], AT)])
        assert state(sink) == {("account", 1): account(1)}
    assert query(dsn, "SELECT origin, entity_type, id, account_id FROM events ORDER BY shard_seq") == [
        ("live", "account", 1, 1), ("rejected", "account", 1, 1), ("rejected", "position", None, None)
    ]
