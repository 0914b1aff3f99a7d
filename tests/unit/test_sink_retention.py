"""Retention of the change log (sqlite, jsonl) with an injected clock, and jsonl rotation; entities are kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from shardsync.change import Change
from shardsync.sinks import open_sink
from shardsync.sinks.base import iso_utc
from shardsync.sinks.jsonl import JsonlSink

DAY = 86400.0
#: 2024-05-01T00:00:00Z
T0 = 1714521600.0


def at(seconds: float) -> str:
    return iso_utc(T0 + seconds)


def upsert(ident: int, when: float, **fields: object) -> Change:
    return Change("live", "account", "Updated", ident, {"id": ident, **fields}, at(when), ident)


def seqs(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [s for (s,) in db.execute("SELECT seq FROM events ORDER BY seq")]
    finally:
        db.close()


def test_sqlite_prunes_old_events_in_batches_and_keeps_entities(tmp_path: Path) -> None:
    """Events older than the retention go, at most `limit` per call, until a call returns 0; state stays."""
    with open_sink("sqlite", path=str(tmp_path), remainder=0, divisor=1) as sink:
        sink.write([upsert(n % 3, n) for n in range(25)])  # received at T0 + 0..24 s
        removed = []
        while count := sink.prune(10.0, now=T0 + 30, limit=4):
            removed.append(count)
        assert removed == [4, 4, 4, 4, 4]  # everything received before T0 + 20
        assert sink.prune(10.0, now=T0 + 30) == 0
        assert {i for _, i, _ in sink.load()} == {0, 1, 2}
    assert seqs(tmp_path / "shard-000-of-001.sqlite3") == list(range(21, 26))


def test_sqlite_zero_retention_keeps_everything(tmp_path: Path) -> None:
    """events_retention 0 keeps the whole log, however old."""
    with open_sink("sqlite", path=str(tmp_path), remainder=0, divisor=1) as sink:
        sink.write([upsert(1, 0)])
        assert sink.prune(0.0, now=T0 + 365 * DAY) == 0
    assert seqs(tmp_path / "shard-000-of-001.sqlite3") == [1]


def test_sqlite_never_prunes_the_newest_row_so_seq_never_restarts(tmp_path: Path) -> None:
    """Even when every event is expired the newest stays, so the next seq follows it instead of starting over."""
    path = tmp_path / "shard-000-of-001.sqlite3"
    with open_sink("sqlite", path=str(tmp_path), remainder=0, divisor=1) as sink:
        sink.write([upsert(1, 0), upsert(1, 1), upsert(1, 2)])
        while sink.prune(1.0, now=T0 + 100 * DAY):
            pass
        assert seqs(path) == [3]
        sink.write([upsert(1, 100 * DAY)])
    assert seqs(path) == [3, 4]


def jsonl_lines(tmp_path: Path) -> list[dict[str, object]]:
    """Every retained line of shard 0/1, segments first then the active file."""
    files = sorted(p for p in tmp_path.glob("shard-000-of-001.*.jsonl") if "checkpoint" not in p.name)
    files.append(tmp_path / "shard-000-of-001.jsonl")
    return [orjson.loads(line) for file in files for line in file.read_bytes().splitlines()]


def test_jsonl_rotates_by_size_and_by_day_naming_segments_by_first_seq(tmp_path: Path) -> None:
    """The active log becomes a segment named by its first seq when it is big enough or a new UTC day starts."""
    with JsonlSink(str(tmp_path), remainder=0, divisor=1, rotate_bytes=400) as sink:
        sink.write([upsert(1, 0, pad="x" * 200)])  # seq 1: ~340 bytes
        sink.write([upsert(1, 1)])  # seq 2: still under 400 bytes, same file
        sink.write([upsert(2, 2)])  # seq 3: the file passed 400 bytes, rotated before this batch
        sink.write([upsert(3, DAY)])  # seq 4: a new UTC day, rotated again
    names = sorted(p.name for p in tmp_path.glob("shard-000-of-001*.jsonl"))
    assert names == ["shard-000-of-001.000000000001.jsonl", "shard-000-of-001.000000000003.jsonl",
                     "shard-000-of-001.jsonl"]
    assert [line["seq"] for line in jsonl_lines(tmp_path)] == [1, 2, 3, 4]


def test_jsonl_prune_folds_expired_segments_into_the_checkpoint(tmp_path: Path) -> None:
    """Whole expired segments are folded into the checkpoint and deleted; load() still gives the full state,
    and seq continues after a reopen even with the active file empty."""
    with JsonlSink(str(tmp_path), remainder=0, divisor=1) as sink:
        for day in range(5):  # one segment per day: T0, T0+1d, ...
            sink.write([upsert(day, day * DAY), upsert(100, day * DAY, day=day),
                        Change("live", "account", "Deleted", day - 1, {"id": day - 1}, at(day * DAY), day - 1)])
        state = {(t, i): e for t, i, e in sink.load()}
        assert state == {("account", 4): {"id": 4}, ("account", 100): {"id": 100, "day": 4}}
        removed = []
        while count := sink.prune(2.5 * DAY, now=T0 + 4 * DAY):
            removed.append(count)
        assert removed == [3, 3]  # the segments of days 0 and 1 end before the cutoff (day 1.5); day 2's does not
        assert {(t, i): e for t, i, e in sink.load()} == state
    assert [line["seq"] for line in jsonl_lines(tmp_path)] == list(range(7, 16))
    checkpoint = (tmp_path / "shard-000-of-001.checkpoint.jsonl").read_bytes().splitlines()
    assert orjson.loads(checkpoint[0]) == {"seq": 6}
    with JsonlSink(str(tmp_path), remainder=0, divisor=1) as again:
        assert {(t, i): e for t, i, e in again.load()} == state
        again.write([upsert(7, 5 * DAY)])
    assert jsonl_lines(tmp_path)[-1]["seq"] == 16


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_negative_retention_is_refused(kind: str, tmp_path: Path) -> None:
    """A negative retention is a programming error, not 'keep everything'."""
    with open_sink(kind, path=str(tmp_path), remainder=0, divisor=1) as sink, pytest.raises(ValueError):
        sink.prune(-1.0, now=T0)
