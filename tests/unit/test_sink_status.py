"""The freshness row of the file sinks: written with a batch or alone, read back, retired and moved away."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from shardsync.change import Change
from shardsync.sinks import Freshness, SinkError, SinkState, open_sink, retire
from shardsync.sinks.base import Sink
from shardsync.sinks.jsonl import JsonlSink
from shardsync.sinks.sqlite import SqliteSink

AT = "2024-05-01T12:00:00.000Z"


def fresh(state: SinkState = SinkState.LIVE, *, remainder: int = 3, divisor: int = 16, **fields: Any) -> Freshness:
    values: dict[str, Any] = {"expression": "modAccountId", "snapshot_at": "2024-05-01T11:59:00.000Z",
                              "last_event_at": AT, "last_commit_at": AT, "session": "s1", **fields}
    return Freshness(remainder=remainder, divisor=divisor, state=state, **values)


def created(ident: int) -> Change:
    return Change("live", "account", "Created", ident, {"id": ident}, AT, ident)


def status_of(sink: Sink) -> Freshness | None:
    assert isinstance(sink, SqliteSink | JsonlSink)
    return sink.status()


@pytest.fixture(params=["sqlite", "jsonl"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def open_(kind: str, path: Path, remainder: int = 3, divisor: int = 16) -> Sink:
    return open_sink(kind, path=str(path), remainder=remainder, divisor=divisor)


def test_write_with_freshness_stores_both(kind: str, tmp_path: Path) -> None:
    """A batch written with a status row leaves the changes and exactly that row."""
    with open_(kind, tmp_path) as sink:
        assert status_of(sink) is None
        row = fresh(session="abc")
        sink.write([created(1)], row)
        assert status_of(sink) == row
        assert dict((t, i) for t, i, _ in sink.load()) == {"account": 1}
    with open_(kind, tmp_path) as again:
        assert status_of(again) == row


def test_mark_replaces_only_the_status(kind: str, tmp_path: Path) -> None:
    """mark() rewrites the one status row through every state and leaves the data alone."""
    with open_(kind, tmp_path) as sink:
        sink.write([created(1)])
        for state in SinkState:
            row = fresh(state, session=f"s-{state}")
            sink.mark(row)
            assert status_of(sink) == row
        sink.write([], fresh(SinkState.LIVE, last_commit_at=None))
        assert status_of(sink) == fresh(SinkState.LIVE, last_commit_at=None)
        assert len(list(sink.load())) == 1
    if kind == "sqlite":
        db = sqlite3.connect(tmp_path / "shard-003-of-016.sqlite3")
        assert db.execute("SELECT count(*) FROM shard_status").fetchone() == (1,)
        db.close()


def test_status_row_of_another_shard_is_refused(kind: str, tmp_path: Path) -> None:
    """A status row naming another shard is a programming error, refused before anything is written."""
    with open_(kind, tmp_path) as sink:
        with pytest.raises(SinkError, match="status row for shard 4/16"):
            sink.write([created(1)], fresh(remainder=4))
        with pytest.raises(SinkError, match="given to the sink of 3/16"):
            sink.mark(fresh(divisor=8))
        assert list(sink.load()) == []


def test_sqlite_status_commits_with_its_batch(tmp_path: Path) -> None:
    """A batch that fails inside the transaction leaves the previous status row, not the new one."""
    with open_("sqlite", tmp_path) as sink:
        sink.write([created(1)], fresh(session="before"))
        db = sqlite3.connect(tmp_path / "shard-003-of-016.sqlite3", isolation_level=None)
        db.execute("CREATE TRIGGER boom BEFORE INSERT ON events WHEN NEW.id = 666 "
                   "BEGIN SELECT RAISE(ABORT, 'injected'); END")
        with pytest.raises(SinkError, match="injected"):
            sink.write([created(2), created(666)], fresh(session="after"))
        db.close()
        assert status_of(sink) == fresh(session="before")


def test_jsonl_sidecar_is_replaced_after_the_data(tmp_path: Path) -> None:
    """The jsonl sidecar holds the shard_status columns and is not rewritten when the batch fails."""
    with open_("jsonl", tmp_path) as sink:
        sink.write([created(1)], fresh(session="one"))
        sidecar = tmp_path / "shard-003-of-016.status.json"
        assert orjson.loads(sidecar.read_bytes()) == {
            "remainder": 3, "divisor": 16, "expression": "modAccountId", "state": "live",
            "snapshot_at": "2024-05-01T11:59:00.000Z", "last_event_at": AT, "last_commit_at": AT, "session": "one",
        }
        inode = sidecar.stat().st_ino
        bad = Change("live", "account", "Created", 2, {"id": 2, "x": object()}, AT)
        with pytest.raises(SinkError, match="cannot serialize"):
            sink.write([bad], fresh(session="two"))
        assert status_of(sink) == fresh(session="one")
        sink.mark(fresh(session="three"))
        # Replaced by rename (a reader never sees a half-written file), not rewritten in place.
        assert sidecar.stat().st_ino != inode
        assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_retire_marks_and_moves_the_files(kind: str, tmp_path: Path) -> None:
    """retire() keeps the last status but says retired, and moves every file of the shard to retired/."""
    with open_(kind, tmp_path) as sink:
        sink.write([created(1)], fresh(session="last"))
    with open_(kind, tmp_path, remainder=0) as other:
        other.write([created(2)])
    retire(kind, path=str(tmp_path), remainder=3, divisor=16)
    left = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert all(name.startswith("shard-000-of-016") for name in left), left
    moved = tmp_path / "retired"
    assert any(p.name.startswith("shard-003-of-016") for p in moved.iterdir())
    with open_(kind, moved) as retired:
        assert status_of(retired) == fresh(SinkState.RETIRED, session="last")
        assert [i for _, i, _ in retired.load()] == [1]


def test_retire_without_a_previous_status_and_twice(kind: str, tmp_path: Path) -> None:
    """A shard with no status row gets a bare retired one; a second retirement of the name goes to retired/1/."""
    for round_ in range(2):
        with open_(kind, tmp_path) as sink:
            sink.write([created(round_)])
        retire(kind, path=str(tmp_path), remainder=3, divisor=16)
    first, second = tmp_path / "retired", tmp_path / "retired" / "1"
    for directory, ident in ((first, 0), (second, 1)):
        with open_(kind, directory) as retired:
            assert status_of(retired) == Freshness(3, 16, "", SinkState.RETIRED, None, None, None, "")
            assert [i for _, i, _ in retired.load()] == [ident]


def test_retire_refuses_a_shard_still_written_and_ignores_a_missing_one(kind: str, tmp_path: Path) -> None:
    """While a writer holds the shard retire fails and moves nothing; a shard with no file is a no-op."""
    with open_(kind, tmp_path), pytest.raises(SinkError, match="in use by another process"):
        retire(kind, path=str(tmp_path), remainder=3, divisor=16)
    assert not (tmp_path / "retired").exists()
    retire(kind, path=str(tmp_path), remainder=5, divisor=16)
    assert not (tmp_path / "retired").exists()


def test_retired_files_are_private(kind: str, tmp_path: Path) -> None:
    """The retired/ directory is created closed to others like the state directory."""
    with open_(kind, tmp_path) as sink:
        sink.write([created(1)])
    retire(kind, path=str(tmp_path), remainder=3, divisor=16)
    assert os.stat(tmp_path / "retired").st_mode & 0o007 == 0
