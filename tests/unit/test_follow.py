"""The follow engine over real sqlite and jsonl sinks: order, exactly-once, cursor, filters, shards that come and go,
gaps and status notices (in-process, clock injected)."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from shardsync.change import Change
from shardsync.follow import open_source
from shardsync.follow.cursor import Cursor, CursorError
from shardsync.follow.engine import Follower
from shardsync.follow.source import Source
from shardsync.sinks import Freshness, SinkState, open_sink, retire
from shardsync.sinks.base import Sink, iso_utc
from shardsync.sinks.jsonl import JsonlSink

T0 = 1714521600.0  # 2024-05-01T00:00:00Z


def change(ident: int, entity_type: str = "position", account: int | None = 7, when: float = 0.0,
           **fields: Any) -> Change:
    return Change("live", entity_type, "Updated", ident, {"id": ident, **fields}, iso_utc(T0 + when), account)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Run:
    """A follower over ``path`` writing into memory."""

    def __init__(self, kind: str, path: Path, cursor: Path | None = None, **options: Any) -> None:
        self.out = io.BytesIO()
        self.err = io.StringIO()
        self.clock = options.pop("clock", Clock())
        self.source: Source = open_source(kind, str(path))
        self.cursor = Cursor(str(cursor) if cursor else None)
        self.follower = Follower(self.source, self.cursor, self.out, self.err, clock=self.clock, **options)

    def drain(self) -> list[dict[str, Any]]:
        """Step until nothing is read; the lines written since the last drain."""
        start = len(self.out.getvalue())
        while self.follower.step():
            pass
        return [orjson.loads(line) for line in self.out.getvalue()[start:].splitlines()]

    def close(self) -> None:
        self.source.close()


@pytest.fixture(params=["sqlite", "jsonl"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sinks(kind: str, tmp_path: Path) -> Iterator[dict[int, Sink]]:
    opened = {r: open_sink(kind, path=str(tmp_path), remainder=r, divisor=4) for r in range(2)}
    yield opened
    for sink in opened.values():
        sink.close()


def keys(lines: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(line["shard"], line["seq"]) for line in lines if "seq" in line]


def test_every_change_once_in_shard_order_with_the_documented_fields(kind: str, tmp_path: Path,
                                                                     sinks: dict[int, Sink]) -> None:
    """From the start, each shard's changes come out once, in seq order, as the documented JSON line."""
    sinks[0].write([change(1), change(2, entity_type="fill", account=None)])
    sinks[1].write([change(3)])
    sinks[0].write([Change("system", "alertSignal", "Event", None, {"text": "x"}, iso_utc(T0), None)])
    run = Run(kind, tmp_path, from_start=True)
    lines = run.drain()
    assert keys(lines) == [(0, 1), (0, 2), (0, 3), (1, 1)]
    assert lines[0] == {"shard": 0, "divisor": 4, "seq": 1, "origin": "live", "entityType": "position",
                        "eventType": "Updated", "id": 1, "accountId": 7, "receivedAt": "2024-05-01T00:00:00.000Z",
                        "entity": {"id": 1}}
    assert [list(line) for line in lines] == [list(lines[0])] * 4
    assert lines[2]["id"] is None and lines[2]["entityType"] == "alertSignal"
    sinks[1].write([change(4), change(5)])
    assert keys(run.drain()) == [(1, 2), (1, 3)]
    assert run.drain() == []
    run.close()


def test_without_a_cursor_file_it_starts_at_the_end(kind: str, tmp_path: Path, sinks: dict[int, Sink]) -> None:
    """A first run without --from-start shows only changes committed after it started."""
    sinks[0].write([change(1), change(2)])
    run = Run(kind, tmp_path)
    assert run.drain() == []
    sinks[0].write([change(3)])
    assert keys(run.drain()) == [(0, 3)]
    run.close()


def test_a_cursor_file_resumes_exactly_where_the_last_run_stopped(kind: str, tmp_path: Path,
                                                                  sinks: dict[int, Sink]) -> None:
    """Two runs on one cursor file deliver every change exactly once between them, and the file is a cursor."""
    cursor = tmp_path / "cursor.json"
    sinks[0].write([change(n) for n in range(1, 6)])
    first = Run(kind, tmp_path, cursor, from_start=True)
    seen = keys(first.drain())
    first.close()
    sinks[0].write([change(6)])
    sinks[1].write([change(7)])  # a shard with no position in a resumed cursor starts at its beginning
    second = Run(kind, tmp_path, cursor)
    seen += keys(second.drain())
    second.close()
    assert seen == [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6), (1, 1)]
    assert orjson.loads(cursor.read_bytes()) == {"version": 1, "positions": [
        {"divisor": 4, "remainder": 0, "seq": 6}, {"divisor": 4, "remainder": 1, "seq": 1}]}


def test_the_cursor_moves_only_after_the_lines_were_flushed(kind: str, tmp_path: Path,
                                                            sinks: dict[int, Sink]) -> None:
    """When the flush to stdout fails, the cursor file keeps the previous positions."""
    cursor = tmp_path / "cursor.json"
    sinks[0].write([change(1)])
    run = Run(kind, tmp_path, cursor, from_start=True)
    run.drain()
    saved = cursor.read_bytes()
    sinks[0].write([change(2)])

    class Broken(io.BytesIO):
        def flush(self) -> None:
            raise BrokenPipeError

    run.follower.out = Broken()
    with pytest.raises(BrokenPipeError):
        run.follower.step()
    assert cursor.read_bytes() == saved
    run.close()


def test_filters_skip_lines_but_advance_the_cursor(kind: str, tmp_path: Path, sinks: dict[int, Sink]) -> None:
    """--types and --account keep only matching lines; filtered changes are still consumed."""
    cursor = tmp_path / "cursor.json"
    sinks[0].write([change(1, account=7), change(2, "order", account=7), change(3, account=8),
                    change(4, "fill", account=None)])
    run = Run(kind, tmp_path, cursor, from_start=True, types=["position", "fill"], accounts=[7])
    assert keys(run.drain()) == [(0, 1)]
    run.close()
    assert orjson.loads(cursor.read_bytes())["positions"][0]["seq"] == 4


def test_shards_that_appear_are_read_from_their_start(kind: str, tmp_path: Path, sinks: dict[int, Sink]) -> None:
    """A shard file created while following (a reload, a new divisor) is followed from its first change."""
    run = Run(kind, tmp_path)
    assert run.drain() == []
    with open_sink(kind, path=str(tmp_path), remainder=5, divisor=8) as new:
        new.write([change(1), change(2)])
    assert [(line["shard"], line["divisor"], line["seq"]) for line in run.drain()] == [(5, 8, 1), (5, 8, 2)]
    run.close()


def test_a_retired_shard_is_drained_then_reported(kind: str, tmp_path: Path, sinks: dict[int, Sink]) -> None:
    """Changes committed before retirement are delivered, then the shard is reported retired and dropped."""
    run = Run(kind, tmp_path, from_start=True, status_lines=True)
    sinks[1].write([change(1)])
    assert keys(run.drain()) == [(1, 1)]
    sinks[1].write([change(2)])
    sinks[1].close()
    retire(kind, path=str(tmp_path), remainder=1, divisor=4)
    lines = run.drain()
    assert keys(lines) == [(1, 2)]
    assert [(line["notice"], line["shard"], line["state"]) for line in lines if "notice" in line] == [
        ("status", 1, "retired")
    ]
    assert "shard 1/4: retired" in run.err.getvalue()
    assert run.drain() == []
    run.close()


def freshness(remainder: int, state: SinkState, last_event: float) -> Freshness:
    return Freshness(remainder, 4, "modAccountId", state, None, iso_utc(last_event), None, "s")


def test_status_notices_for_shards_not_live_and_stale(kind: str, tmp_path: Path, sinks: dict[int, Sink]) -> None:
    """Not-live shards are reported at once, live ones only when they change or go stale (clock injected)."""
    clock = Clock()
    sinks[0].mark(freshness(0, SinkState.LIVE, T0))
    run = Run(kind, tmp_path, status_lines=True, stale_after=10.0, status_every=0.0, clock=clock)

    def notices() -> list[tuple[int, str, bool]]:
        return [(line["shard"], line["state"], line["stale"]) for line in run.drain() if "notice" in line]

    assert notices() == [(1, "unknown", False)]  # shard 1 has no status row yet; shard 0 is live: silent
    clock.now = T0 + 5
    sinks[1].mark(freshness(1, SinkState.RESYNCING, T0 + 5))
    assert notices() == [(1, "resyncing", False)]
    clock.now = T0 + 11
    assert notices() == [(0, "live", True)]  # no frame for 11 s
    sinks[0].mark(freshness(0, SinkState.LIVE, T0 + 11))
    sinks[1].mark(freshness(1, SinkState.LIVE, T0 + 11))
    assert notices() == [(0, "live", False), (1, "live", False)]
    assert notices() == []
    assert "shard 0/4: live but stale (last event 2024-05-01T00:00:00.000Z, 11.0 s ago)" in run.err.getvalue()
    run.close()


def test_changes_pruned_before_they_were_read_are_reported_as_a_gap(tmp_path: Path) -> None:
    """A cursor behind the retained log gets a gap notice naming what is gone, then the rest."""
    cursor = tmp_path / "cursor.json"
    with open_sink("sqlite", path=str(tmp_path), remainder=0, divisor=1) as sink:
        sink.write([change(1, when=0)])
        first = Run("sqlite", tmp_path, cursor, from_start=True)
        first.drain()
        first.close()
        sink.write([change(n, when=n) for n in range(2, 6)])
        while sink.prune(1.0, now=T0 + 4.5):
            pass
    second = Run("sqlite", tmp_path, cursor, status_lines=True)
    lines = second.drain()
    assert lines[0] == {"notice": "gap", "shard": 0, "divisor": 1, "after": 1, "next": 4}
    assert keys(lines) == [(0, 4), (0, 5)]
    assert "changes 2..3 were pruned" in second.err.getvalue()
    second.close()


def test_jsonl_rotation_and_pruning_while_following(tmp_path: Path) -> None:
    """Segments rotated and pruned under a follower: every change once, in order, across files."""
    run = Run("jsonl", tmp_path, from_start=True)
    seen: list[int] = []
    with JsonlSink(str(tmp_path), remainder=0, divisor=1, rotate_bytes=600) as sink:
        for n in range(1, 31):
            sink.write([change(n, when=n, pad="x" * 50)])
            if n % 7 == 0:
                seen += [line["seq"] for line in run.drain()]
            if n == 20:
                while sink.prune(10.0, now=T0 + 20):
                    pass
    seen += [line["seq"] for line in run.drain()]
    assert seen == list(range(1, 31))
    assert len(list(tmp_path.glob("shard-000-of-001.0*.jsonl"))) >= 2
    run.close()


def test_an_idle_sqlite_shard_costs_one_pragma_per_poll(tmp_path: Path) -> None:
    """Polling a shard with no new commit runs only PRAGMA data_version, never the events query."""
    with open_sink("sqlite", path=str(tmp_path), remainder=0, divisor=1) as sink:
        sink.write([change(1)])
        run = Run("sqlite", tmp_path, from_start=True, status_every=3600.0)
        run.drain()
        statements: list[str] = []
        conn: sqlite3.Connection = run.source._shards[(0, 1)].conn  # type: ignore[attr-defined]
        conn.set_trace_callback(statements.append)
        for _ in range(3):
            run.follower.step()
        assert statements == ["PRAGMA data_version"] * 3
        sink.write([change(2)])
        assert keys(run.drain()) == [(0, 2)]
        assert any(s.startswith("SELECT seq") for s in statements)
        run.close()


def test_a_damaged_cursor_file_is_refused(tmp_path: Path) -> None:
    """A cursor file that is not a cursor stops follow instead of silently restarting from the end."""
    bad = tmp_path / "cursor.json"
    bad.write_text('{"positions": []}')
    with pytest.raises(CursorError, match="not a shardsync follow cursor"):
        Cursor(str(bad))
    bad.write_text("")
    with pytest.raises(CursorError, match="cannot read cursor"):
        Cursor(str(bad))


def test_a_shard_file_without_tables_yet_is_taken_up_later(tmp_path: Path) -> None:
    """A shard file that exists before its tables were committed is skipped, then followed from its start."""
    (tmp_path / "shard-000-of-001.sqlite3").write_bytes(b"")
    run = Run("sqlite", tmp_path)
    assert run.drain() == []
    with open_sink("sqlite", path=str(tmp_path), remainder=0, divisor=1) as sink:
        sink.write([change(1)])
    assert keys(run.drain()) == [(0, 1)]
    run.close()
