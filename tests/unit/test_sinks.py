"""The sqlite and jsonl sinks: schema, round trips, atomicity, single writer, recovery."""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from polling import wait_until
from shardsync.change import Change, account_id_of
from shardsync.sinks import SinkError, open_sink, shard_file_name
from shardsync.sinks import jsonl as jsonl_module
from shardsync.sinks import sqlite as sqlite_module
from shardsync.sinks.base import Sink
from shardsync.sinks.jsonl import JsonlSink
from shardsync.sinks.sqlite import SqliteSink

KINDS = ["sqlite", "jsonl"]
SUFFIX = {"sqlite": "sqlite3", "jsonl": "jsonl"}
AT = "2024-05-01T12:00:00.000Z"


def change(
    event_type: str,
    entity: Any,
    *,
    entity_type: str = "account",
    origin: str = "live",
    at: str = AT,
) -> Change:
    ident = entity.get("id") if isinstance(entity, dict) and origin != "system" else None
    # Attributed as the mirror would for entities that carry their account.
    account = account_id_of(entity_type, entity)
    return Change(origin, entity_type, event_type, ident, entity, at, account)  # type: ignore[arg-type]


def account(ident: int, **fields: Any) -> dict[str, Any]:
    return {"id": ident, "name": f"acc{ident}", **fields}


def open_(kind: str, directory: Path, remainder: int = 3, divisor: int = 16) -> Sink:
    return open_sink(kind, path=str(directory), remainder=remainder, divisor=divisor)


def state(sink: Sink) -> dict[tuple[str, int], dict[str, Any]]:
    return {(entity_type, ident): entity for entity_type, ident, entity in sink.load()}


def shard_file(kind: str, directory: Path) -> Path:
    return directory / shard_file_name(3, 16, SUFFIX[kind])


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "state" / "nested"


def test_shard_file_name_pads_to_three_digits() -> None:
    """Remainder and divisor are zero-padded to three digits as the contract says."""
    assert shard_file_name(3, 16, "sqlite3") == "shard-003-of-016.sqlite3"
    assert shard_file_name(0, 1, "jsonl") == "shard-000-of-001.jsonl"
    assert shard_file_name(998, 999, "jsonl") == "shard-998-of-999.jsonl"


def test_shard_file_name_widens_for_large_divisors() -> None:
    """Divisors above 999 widen both numbers so names still sort and never collide."""
    assert shard_file_name(5, 1000, "sqlite3") == "shard-0005-of-1000.sqlite3"


@pytest.mark.parametrize(("remainder", "divisor"), [(16, 16), (-1, 4), (0, 0)])
def test_shard_file_name_rejects_impossible_shards(remainder: int, divisor: int) -> None:
    """A remainder outside 0..divisor-1 is a programming error, not a file name."""
    with pytest.raises(ValueError, match="invalid shard"):
        shard_file_name(remainder, divisor, "jsonl")


def test_unknown_kind_is_a_sink_error(tmp_path: Path) -> None:
    """An unknown sink kind fails with a message listing the valid ones."""
    with pytest.raises(SinkError, match="sqlite, jsonl, postgres"):
        open_sink("csv", path=str(tmp_path), remainder=0, divisor=1)


def test_open_creates_private_directory_and_named_file(kind: str, directory: Path) -> None:
    """Opening creates the missing directory (no access for others) and the shard's file."""
    with open_(kind, directory):
        assert directory.is_dir()
        assert stat.S_IMODE(directory.stat().st_mode) & 0o007 == 0
        assert shard_file(kind, directory).is_file()


def test_files_are_not_world_readable(kind: str, directory: Path) -> None:
    """Every file the sink creates (including SQLite's WAL and lock files) is closed to others."""
    with open_(kind, directory) as sink:
        sink.write([change("Created", account(1))])
        files = list(directory.iterdir())
        # sqlite: the file, its WAL/shm and lock; jsonl: the log and its lock.
        assert len(files) >= 2
        for file in files:
            assert stat.S_IMODE(file.stat().st_mode) & 0o007 == 0, file


def test_round_trip_applies_upserts_and_deletes(kind: str, directory: Path) -> None:
    """Created/Updated upsert, Deleted removes, and load returns the resulting state."""
    with open_(kind, directory) as sink:
        assert state(sink) == {}
        sink.write(
            [
                change("Created", account(1)),
                change("Created", account(2)),
                change("Created", {"id": 10, "accountId": 1, "netPos": 3}, entity_type="position"),
            ]
        )
        sink.write(
            [
                change("Updated", account(1, name="renamed")),
                change("Deleted", account(2)),
                change("Created", account(1, name="again"), origin="resync"),
                change("Deleted", account(99)),
            ]
        )
        assert state(sink) == {
            ("account", 1): account(1, name="again"),
            ("position", 10): {"id": 10, "accountId": 1, "netPos": 3},
        }


def test_order_within_a_batch_is_kept(kind: str, directory: Path) -> None:
    """A delete followed by a re-create of the same id in one batch ends with the entity present."""
    with open_(kind, directory) as sink:
        sink.write(
            [
                change("Created", account(1)),
                change("Deleted", account(1)),
                change("Created", account(1, name="back")),
                change("Updated", account(2)),
                change("Deleted", account(2)),
            ]
        )
        assert state(sink) == {("account", 1): account(1, name="back")}


def test_sqlite_writes_each_changed_key_once_per_batch(directory: Path) -> None:
    """A key changed many times in one batch costs one entities write (its last state); every change is logged."""
    with open_("sqlite", directory) as sink:
        sink.write([change("Created", account(1)), change("Created", account(2))])
        db = sqlite3.connect(shard_file("sqlite", directory), isolation_level=None)
        db.executescript(
            """
            CREATE TABLE writes (n INTEGER);
            INSERT INTO writes VALUES (0);
            CREATE TRIGGER on_insert AFTER INSERT ON entities BEGIN UPDATE writes SET n = n + 1; END;
            CREATE TRIGGER on_update AFTER UPDATE ON entities BEGIN UPDATE writes SET n = n + 1; END;
            CREATE TRIGGER on_delete AFTER DELETE ON entities BEGIN UPDATE writes SET n = n + 1; END;
            """
        )
        burst = [change("Updated", account(1, balance=n), at=f"t{n}") for n in range(100)]
        burst += [change("Deleted", account(2)), change("Created", account(2, name="back"), at="t-back")]
        burst += [change("Created", account(3)), change("Deleted", account(3))]
        sink.write(burst)
        # One write each for keys 1 and 2; key 3's create-then-delete is one no-op delete.
        assert db.execute("SELECT n FROM writes").fetchone()[0] == 2
        db.close()
        assert state(sink) == {("account", 1): account(1, balance=99), ("account", 2): account(2, name="back")}
    assert rows(directory, "SELECT id, updated_at FROM entities ORDER BY id") == [(1, "t99"), (2, "t-back")]
    assert rows(directory, "SELECT count(*) FROM events") == [(2 + 104,)]


def test_system_events_do_not_touch_entities(kind: str, directory: Path) -> None:
    """A system event is logged but never creates, changes or removes an entity."""
    with open_(kind, directory) as sink:
        sink.write([change("Created", account(1))])
        sink.write(
            [
                change("Event", {"id": 1, "text": "liquidating"}, entity_type="account", origin="system"),
                change("Event", [1, 2, 3], entity_type="alertSignal", origin="system"),
                change("Event", None, entity_type="shutdown", origin="system"),
            ]
        )
        assert state(sink) == {("account", 1): account(1)}


def test_reopen_after_close_loads_the_same_state(kind: str, directory: Path) -> None:
    """What one sink committed, the next sink on the same shard loads back exactly."""
    sink = open_(kind, directory)
    sink.write([change("Created", account(i, nested={"x": [i, None, 1.5]})) for i in range(50)])
    sink.write([change("Deleted", account(i)) for i in range(0, 50, 2)])
    before = state(sink)
    sink.close()
    with open_(kind, directory) as again:
        assert state(again) == before
        assert len(before) == 25


def test_close_is_idempotent_and_write_after_close_fails(kind: str, directory: Path) -> None:
    """close() may be called twice, and a closed sink refuses writes loudly."""
    sink = open_(kind, directory)
    sink.close()
    sink.close()
    with pytest.raises(SinkError, match="closed"):
        sink.write([change("Created", account(1))])


def test_unserializable_entity_fails_the_whole_batch(kind: str, directory: Path) -> None:
    """A change that cannot be serialised midway leaves none of its batch behind and the sink usable."""
    with open_(kind, directory) as sink:
        sink.write([change("Created", account(1))])
        size = shard_file(kind, directory).stat().st_size
        bad = [
            change("Updated", account(1, name="lost")),
            change("Created", account(2, blob=object())),
            change("Created", account(3)),
        ]
        with pytest.raises(SinkError, match=r"cannot serialize account Created id=2"):
            sink.write(bad)
        assert state(sink) == {("account", 1): account(1)}
        if kind == "jsonl":
            assert shard_file(kind, directory).stat().st_size == size
        sink.write([change("Created", account(4))])
        assert set(state(sink)) == {("account", 1), ("account", 4)}


@pytest.mark.parametrize("other", KINDS)
def test_second_writer_in_same_process_is_refused(kind: str, other: str, directory: Path) -> None:
    """A second open of the same shard file conflicts even within one process (flock is per open)."""
    with open_(kind, directory):
        if other == kind:
            with pytest.raises(SinkError, match="is in use by another process"):
                open_(kind, directory)
        else:
            # Different kinds are different files and do not conflict.
            open_(other, directory).close()
        # Another shard in the same directory is a different file.
        open_(kind, directory, remainder=4).close()


SECOND_WRITER = textwrap.dedent(
    """
    import sys
    from shardsync.sinks import SinkError, open_sink
    try:
        open_sink(sys.argv[1], path=sys.argv[2], remainder=3, divisor=16).close()
    except SinkError as exc:
        print(exc)
        sys.exit(3)
    """
)


def run_second_writer(kind: str, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SECOND_WRITER, kind, str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_second_writer_in_another_process_is_refused(kind: str, directory: Path) -> None:
    """Another process cannot open a shard file while a writer holds it, and can once it is closed."""
    sink = open_(kind, directory)
    refused = run_second_writer(kind, directory)
    assert refused.returncode == 3, refused.stderr
    assert "is in use by another process" in refused.stdout
    assert str(shard_file(kind, directory)) in refused.stdout
    sink.close()
    allowed = run_second_writer(kind, directory)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


# --- sqlite -----------------------------------------------------------------


def test_sqlite_schema_is_exactly_the_contract(directory: Path) -> None:
    """The two change tables have exactly the public columns, types and keys, in WAL mode."""
    with open_("sqlite", directory):
        db = sqlite3.connect(shard_file("sqlite", directory))
        try:
            columns = {
                table: [(name, type_, pk) for _, name, type_, _, _, pk in db.execute(f"PRAGMA table_info({table})")]
                for table in ("entities", "events")
            }
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            db.close()
    assert columns == {
        "entities": [
            ("entity_type", "TEXT", 1),
            ("id", "INTEGER", 2),
            ("account_id", "INTEGER", 0),
            ("data", "TEXT", 0),
            ("updated_at", "TEXT", 0),
        ],
        "events": [
            ("seq", "INTEGER", 1),
            ("received_at", "TEXT", 0),
            ("origin", "TEXT", 0),
            ("entity_type", "TEXT", 0),
            ("event_type", "TEXT", 0),
            ("id", "INTEGER", 0),
            ("data", "TEXT", 0),
            ("account_id", "INTEGER", 0),
        ],
    }
    assert mode == "wal"


def test_sqlite_synchronous_is_normal(directory: Path) -> None:
    """The writer connection runs synchronous=NORMAL (durable against process crash in WAL)."""
    with open_("sqlite", directory) as sink:
        assert isinstance(sink, SqliteSink)
        conn = sink._connection()
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_sqlite_checkpoints_off_the_commit_path_by_default(directory: Path) -> None:
    """The default sink turns SQLite's automatic checkpoints off and its own checkpointer thread, with the
    default bounds, copies the WAL once its log passes the restart size (tests/unit/test_sink_checkpoint.py has
    the rest)."""
    from shardsync.sinks.sqlite_checkpoint import MAX_WAL_BYTES, RESTART_BYTES

    padding = "x" * 1500
    with open_("sqlite", directory) as sink:
        assert isinstance(sink, SqliteSink)
        assert sink._connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for batch in range(10):
            sink.write([
                Change("live", "order", "Updated", n, {"id": n, "accountId": 1, "note": padding}, "t")
                for n in range(batch * 400, batch * 400 + 400)
            ])
        checkpointer = sink.checkpointer
        assert checkpointer is not None and checkpointer.running
        assert (checkpointer.max_wal_bytes, checkpointer.restart_bytes) == (MAX_WAL_BYTES, RESTART_BYTES)
        wait_until(lambda: checkpointer.stats.passive > 0, 10, "a checkpoint of the ~13 MiB log")
        assert checkpointer.stats.failed == 0, checkpointer.stats


def rows(directory: Path, query: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(shard_file("sqlite", directory))
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def test_sqlite_rows_hold_account_data_and_event_log(directory: Path) -> None:
    """entities carries account_id/updated_at and events logs every change in order, system ones too."""
    with open_("sqlite", directory) as sink:
        sink.write(
            [
                change("Created", account(7), at="t1"),
                change("Created", {"id": 3, "accountId": 7}, entity_type="order", at="t2"),
                change("Event", {"kind": "alert"}, entity_type="alertSignal", origin="system", at="t3"),
                change("Deleted", account(7), at="t4"),
                change("Updated", {"id": 3, "accountId": 7, "x": 1}, entity_type="order", at="t5"),
            ]
        )
    assert rows(directory, "SELECT * FROM entities") == [("order", 3, 7, '{"id":3,"accountId":7,"x":1}', "t5")]
    assert rows(directory, "SELECT * FROM events ORDER BY seq") == [
        (1, "t1", "live", "account", "Created", 7, '{"id":7,"name":"acc7"}', 7),
        (2, "t2", "live", "order", "Created", 3, '{"id":3,"accountId":7}', 7),
        (3, "t3", "system", "alertSignal", "Event", None, '{"kind":"alert"}', None),
        (4, "t4", "live", "account", "Deleted", 7, '{"id":7,"name":"acc7"}', 7),
        (5, "t5", "live", "order", "Updated", 3, '{"id":3,"accountId":7,"x":1}', 7),
    ]


def test_sqlite_failure_inside_the_transaction_rolls_everything_back(directory: Path) -> None:
    """A statement failing after others ran in the transaction leaves no partial rows."""
    with open_("sqlite", directory) as sink:
        sink.write([change("Created", account(1))])
        db = sqlite3.connect(shard_file("sqlite", directory), isolation_level=None)
        # Entity rows are written before event rows, so this fails late in the batch.
        db.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON events WHEN NEW.id = 666 BEGIN SELECT RAISE(ABORT, 'injected'); END"
        )
        batch = [change("Updated", account(1, name="x")), change("Created", account(666))]
        with pytest.raises(SinkError, match="batch of 2 not written: injected"):
            sink.write(batch)
        assert state(sink) == {("account", 1): account(1)}
        assert rows(directory, "SELECT count(*) FROM events") == [(1,)]
        db.execute("DROP TRIGGER boom")
        db.close()
        sink.write(batch)
        assert set(state(sink)) == {("account", 1), ("account", 666)}


def test_sqlite_recovers_from_a_dead_connection(directory: Path) -> None:
    """If the connection dies under it, write raises SinkError and the next write reconnects."""
    with open_("sqlite", directory) as sink:
        assert isinstance(sink, SqliteSink)
        sink._connection().close()
        with pytest.raises(SinkError, match="not written"):
            sink.write([change("Created", account(1))])
        sink.write([change("Created", account(2))])
        assert set(state(sink)) == {("account", 2)}


def test_sqlite_refuses_entity_change_without_id(directory: Path) -> None:
    """A non-system change with no id is refused, not silently stored or dropped."""
    with open_("sqlite", directory) as sink:
        with pytest.raises(SinkError, match="has no id"):
            sink.write([Change("live", "account", "Created", None, {}, AT)])
        with pytest.raises(SinkError, match="unknown event type 'Mangled'"):
            sink.write([Change("live", "account", "Mangled", 1, {"id": 1}, AT)])
        assert rows(directory, "SELECT count(*) FROM events") == [(0,)]


# --- jsonl ------------------------------------------------------------------


def lines(directory: Path) -> list[dict[str, Any]]:
    data = shard_file("jsonl", directory).read_bytes()
    return [orjson.loads(line) for line in data.splitlines()]


def test_jsonl_lines_have_exactly_the_contract_keys(directory: Path) -> None:
    """Each change is one line with exactly seq, origin, entityType, eventType, accountId, entity, receivedAt."""
    with open_("jsonl", directory) as sink:
        sink.write(
            [
                change("Created", account(1), at="t1"),
                change("Event", {"a": 1}, entity_type="alertSignal", origin="system", at="t2"),
            ]
        )
        sink.write([change("Created", {"id": 4, "accountId": 1}, entity_type="order", at="t3")])
    assert lines(directory) == [
        {
            "seq": 1,
            "origin": "live",
            "entityType": "account",
            "eventType": "Created",
            "accountId": 1,
            "entity": account(1),
            "receivedAt": "t1",
        },
        {
            "seq": 2,
            "origin": "system",
            "entityType": "alertSignal",
            "eventType": "Event",
            "accountId": None,
            "entity": {"a": 1},
            "receivedAt": "t2",
        },
        {
            "seq": 3,
            "origin": "live",
            "entityType": "order",
            "eventType": "Created",
            "accountId": 1,
            "entity": {"id": 4, "accountId": 1},
            "receivedAt": "t3",
        },
    ]
    assert [list(line) for line in lines(directory)] == [list(jsonl_module.KEYS)] * 3


@pytest.mark.parametrize("tail", [b'{"origin":"li', b"\x00\x00\x00", b'{"origin":"live"}\n', b"\x00\x00\n"])
def test_jsonl_torn_last_line_is_cut_off(directory: Path, tail: bytes) -> None:
    """A torn or garbage last line (crash mid-append) is trimmed, counted, and the log stays usable."""
    with open_("jsonl", directory) as sink:
        sink.write([change("Created", account(1)), change("Created", account(2))])
    path = shard_file("jsonl", directory)
    good = path.stat().st_size
    with path.open("ab") as file:
        file.write(tail)
    with open_("jsonl", directory) as sink:
        assert isinstance(sink, JsonlSink)
        assert state(sink) == {("account", 1): account(1), ("account", 2): account(2)}
        assert sink.recovered_bytes == len(tail)
        assert path.stat().st_size == good
        sink.write([change("Deleted", account(1))])
    with open_("jsonl", directory) as sink:
        assert isinstance(sink, JsonlSink)
        assert state(sink) == {("account", 2): account(2)}
        assert sink.recovered_bytes == 0


def test_jsonl_corruption_before_the_last_line_is_an_error(directory: Path) -> None:
    """Damage in the middle of the log is reported, never skipped."""
    with open_("jsonl", directory) as sink:
        sink.write([change("Created", account(1))])
    path = shard_file("jsonl", directory)
    with path.open("ab") as file:
        file.write(b"garbage\n")
    with open_("jsonl", directory) as sink:
        sink.write([change("Created", account(2))])
        with pytest.raises(SinkError, match=r"line 2: invalid JSON"):
            state(sink)


def test_jsonl_refuses_entity_without_matching_id(directory: Path) -> None:
    """A change whose entity does not carry its id is refused, since replay could not key it."""
    with open_("jsonl", directory) as sink:
        with pytest.raises(SinkError, match="entity must be an object carrying that id"):
            sink.write([Change("live", "account", "Deleted", 5, {"name": "x"}, AT)])
        with pytest.raises(SinkError, match="unknown event type"):
            sink.write([Change("live", "account", "Mangled", 5, {"id": 5}, AT)])
    assert shard_file("jsonl", directory).stat().st_size == 0


def test_jsonl_failed_append_is_cut_back(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An append that fails halfway (disk full) is truncated away and the next batch lands cleanly."""
    with open_("jsonl", directory) as sink:
        sink.write([change("Created", account(1))])
        size = shard_file("jsonl", directory).stat().st_size
        real_write = os.write
        target = sink._fd  # type: ignore[attr-defined]

        def half_then_full(fd: int, data: Any) -> int:
            if fd != target:
                return real_write(fd, data)
            if len(data) > 10:
                return real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "write", half_then_full)
        with pytest.raises(SinkError, match="No space left on device"):
            sink.write([change("Created", account(2)), change("Created", account(3))])
        monkeypatch.undo()
        assert shard_file("jsonl", directory).stat().st_size == size
        sink.write([change("Created", account(4))])
    with open_("jsonl", directory) as sink:
        assert set(state(sink)) == {("account", 1), ("account", 4)}


def test_rejected_changes_are_logged_and_never_applied(kind: str, directory: Path) -> None:
    """origin=rejected (a quarantined entity) is accepted whatever its shape and kept in the log only."""
    with open_(kind, directory) as sink:
        sink.write([change("Created", account(1))])
        sink.write(
            [
                Change("rejected", "account", "Updated", 1, {"id": 1, "name": None, "bad": True}, AT, 1),
                Change("rejected", "position", "Created", None, [{"no": "id"}], AT),
                Change("rejected", "order", "Mangled", 5, "not an object", AT),
            ]
        )
        assert state(sink) == {("account", 1): account(1)}
    with open_(kind, directory) as again:
        assert state(again) == {("account", 1): account(1)}
    if kind == "sqlite":
        assert rows(directory, "SELECT origin, entity_type, event_type, id, account_id FROM events ORDER BY seq") == [
            ("live", "account", "Created", 1, 1),
            ("rejected", "account", "Updated", 1, 1),
            ("rejected", "position", "Created", None, None),
            ("rejected", "order", "Mangled", 5, None),
        ]
    else:
        assert [(line["origin"], line["entityType"]) for line in lines(directory)][1:] == [
            ("rejected", "account"), ("rejected", "position"), ("rejected", "order")
        ]


@pytest.mark.parametrize("kind", KINDS)
def test_a_change_carrying_its_json_text_is_stored_as_that_text(kind: str, directory: Path) -> None:
    """A change's ``data`` (the mirror's text of its entity) is what the sink stores: not serialised again."""
    text = '{"name":"as held","id":1}'
    with open_(kind, directory) as sink:
        sink.write([Change("live", "account", "Created", 1, {"id": 1, "name": "as held"}, AT, 1, text)])
    if kind == "sqlite":
        with sqlite3.connect(shard_file(kind, directory)) as conn:
            assert conn.execute("SELECT data FROM entities").fetchall() == [(text,)]
            assert conn.execute("SELECT data FROM events").fetchall() == [(text,)]
    else:
        assert text in shard_file(kind, directory).read_text()
    with open_(kind, directory) as sink:
        assert state(sink) == {("account", 1): {"name": "as held", "id": 1}}


def test_sqlite_preload_yields_each_rows_text_and_refuses_a_corrupt_one(directory: Path) -> None:
    """The mirror's preload gets the rows' own JSON text; a row that is no JSON object fails it, named."""
    with open_("sqlite", directory) as sink:
        sink.write([change("Created", account(1)), change("Created", account(2))])
        assert sorted(sink.preload()) == [("account", 1, orjson.dumps(account(1)).decode()),
                                          ("account", 2, orjson.dumps(account(2)).decode())]
    for bad, why in (("[1, 2]", ": not an object"), ("{nope", ": ")):
        with sqlite3.connect(shard_file("sqlite", directory)) as conn:
            conn.execute("UPDATE entities SET data = ? WHERE id = 2", (bad,))
        with open_("sqlite", directory) as sink, pytest.raises(SinkError, match=f"corrupt data for account id=2{why}"):
            list(sink.preload())


def test_sqlite_writes_a_big_batch_piece_by_piece_in_one_transaction(directory: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Across pieces a key ends in its last state and every change is logged in order; a bad entity in a later
    piece leaves nothing of the batch written."""
    monkeypatch.setattr(sqlite_module, "WRITE_PIECE", 2)
    batch = [change("Created", account(1)), change("Created", account(2)), change("Updated", account(1, v=2)),
             change("Deleted", account(2)), change("Created", account(2, v=3)), change("Created", account(3))]
    with open_("sqlite", directory) as sink:
        sink.write(batch)
        assert state(sink) == {("account", 1): account(1, v=2), ("account", 2): account(2, v=3),
                               ("account", 3): account(3)}
        with sqlite3.connect(shard_file("sqlite", directory)) as conn:
            logged = conn.execute("SELECT event_type, id FROM events ORDER BY seq").fetchall()
        assert logged == [(c.event_type, c.id) for c in batch]
        bad = [change("Created", account(4)), change("Created", account(5)), change("Created", account(6, x={1}))]
        with pytest.raises(SinkError, match="cannot serialize account Created id=6"):
            sink.write(bad)
        assert ("account", 4) not in state(sink)
        with sqlite3.connect(shard_file("sqlite", directory)) as conn:
            assert conn.execute("SELECT count(*) FROM events").fetchone() == (len(batch),)
