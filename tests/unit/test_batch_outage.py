"""Unit tests of a sink outage in the batch: changes wait (bounded), retries back off, the sink catches up exactly."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from shardsync.backoff import Backoff
from shardsync.change import Change
from shardsync.mirror import Mirror
from shardsync.protocol import PropsEvent
from shardsync.sinks import Freshness, SinkError, SinkUnavailable, open_sink
from shardsync.sinks.base import Sink
from shardsync.worker.batch import Batch
from shardsync.worker.outage import OUTAGE_BATCHES, OUTAGE_BYTES
from shardsync.worker.parent import Vitals

T0 = "2024-01-01T00:00:00.000Z"
BATCH_MAX = 5


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Flaky:
    """A real jsonl sink behind a switch: while ``down`` every call raises SinkUnavailable, as a lost server."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.down = False
        self.writes: list[int] = []

    def _check(self) -> None:
        if self.down:
            raise SinkUnavailable("test sink: connection refused")

    def write(self, changes: Sequence[Change], freshness: Freshness | None = None) -> None:
        self._check()
        self.writes.append(len(changes))
        self.inner.write(changes, freshness)

    def mark(self, freshness: Freshness) -> None:
        self._check()
        self.inner.mark(freshness)

    def status(self) -> Freshness | None:
        self._check()
        return self.inner.status()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def make(tmp_path: Path, clock: Clock) -> tuple[Batch, Flaky]:
    sink = Flaky(open_sink("jsonl", path=str(tmp_path), remainder=0, divisor=1))
    batch = Batch(sink, Mirror(sink.inner.load(), synced=True), batch_max=BATCH_MAX, flush_interval=0.05,  # type: ignore[arg-type]
                  clock=clock, vitals=Vitals(), log=structlog.get_logger(),
                  retry=Backoff(1.0, 4.0, random.Random(7)))
    return batch, sink


def stored(sink: Flaky) -> dict[tuple[str, int], Any]:
    """What the sink holds, as it loads it."""
    return {(entity_type, ident): entity for entity_type, ident, entity in sink.inner.load()}


def origins(tmp_path: Path) -> list[str]:
    """The change log's origins in order, across its segments (a resync starts a new one)."""
    return [orjson.loads(raw)["origin"] for path in sorted(tmp_path.glob("shard-000-of-001.*jsonl"))
            for raw in path.read_bytes().splitlines()]


def order(ident: int, event: str = "Updated", **extra: Any) -> PropsEvent:
    return PropsEvent("order", event, ({"id": ident, **extra},))


def test_an_unreachable_sink_keeps_the_changes_and_retries_with_backoff(tmp_path: Path) -> None:
    """SinkUnavailable is no session end: the batch and the mirror are kept, retries wait their backoff, and
    once the sink is back the held changes are written as they were, in one transaction."""
    clock = Clock()
    batch, sink = make(tmp_path, clock)
    batch.apply(order(1, v=1), T0)
    batch.commit()
    sink.down = True
    batch.apply(order(1, v=2), T0)
    batch.apply(order(2, v=1), T0)
    with capture_logs() as logs:
        batch.commit()  # no raise
    assert batch.outage is not None and logs[-1]["event"] == "sink_unavailable"
    assert batch.mirror.get(("order", 1)) == {"id": 1, "v": 2}  # not rolled back
    first = batch.retry_at()
    assert first is not None and 100.5 <= first < 101.0  # attempt 1: [0.5, 1) x 1 s
    assert not batch.due(lambda: False)
    batch.commit()  # not due: nothing is tried
    assert sink.writes == [1]
    batch.apply(order(3, v=1), T0)
    assert batch.room() == BATCH_MAX  # reads stay batched while held
    clock.now = first
    assert batch.due(lambda: True)
    with capture_logs() as logs:
        batch.commit()
    assert [line["event"] for line in logs] == ["sink_retry_failed"] and logs[0]["attempt"] == 1
    second = batch.retry_at()
    assert second is not None and first + 1.0 <= second < first + 2.0  # attempt 2: [0.5, 1) x 2 s
    sink.down = False
    clock.now = second
    with capture_logs() as logs:
        batch.commit()
    assert batch.outage is None and sink.writes == [1, 3]
    assert logs[-1]["event"] == "sink_recovered" and logs[-1]["overflowed"] is False
    assert stored(sink) == dict(batch.mirror.committed_items()) == dict(batch.mirror.items())
    assert origins(tmp_path) == ["live"] * 4


def test_an_overflowing_outage_drops_the_records_and_resyncs_the_sink_from_the_mirror(tmp_path: Path) -> None:
    """Past OUTAGE_BATCHES x batch_max records none is kept; the recovering write is the mirror's difference
    from the sink (creates, updates and deletes, origin resync), and the sink then equals the mirror."""
    clock = Clock()
    batch, sink = make(tmp_path, clock)
    for ident in (1, 2, 3):
        batch.apply(order(ident, v=0), T0)
    batch.commit()
    sink.down = True
    batch.apply(order(1, v=1), T0)
    batch.commit()
    limit = OUTAGE_BATCHES * BATCH_MAX
    with capture_logs() as logs:
        for n in range(limit + 50):
            batch.apply(order(1, v=n + 2), T0)
    assert [line["event"] for line in logs] == ["sink_buffer_overflowed"]
    assert batch._pending == [] and batch.outage is not None and batch.outage.overflowed
    batch.apply(order(2, event="Deleted"), T0)
    batch.apply(order(4, event="Created", v=1), T0)
    assert batch._pending == []
    sink.down = False
    clock.now = batch.outage.retry_at
    with capture_logs() as logs:
        batch.commit()
    assert logs[-1]["event"] == "sink_recovered" and logs[-1]["overflowed"] is True
    assert logs[-1]["dropped"] >= 52
    assert sink.writes[-1] == 3  # order 2 deleted, order 1 updated, order 4 created
    assert stored(sink) == dict(batch.mirror.items()) == {
        ("order", 1): {"id": 1, "v": limit + 51}, ("order", 3): {"id": 3, "v": 0}, ("order", 4): {"id": 4, "v": 1}}
    assert origins(tmp_path)[-3:] == ["resync"] * 3


def test_stopping_during_an_outage_tries_once_more_then_says_so(tmp_path: Path) -> None:
    """flush() at stop tries the sink at once; still unreachable, it raises (the next start resyncs)."""
    clock = Clock()
    batch, sink = make(tmp_path, clock)
    sink.down = True
    batch.apply(order(1, v=1), T0)
    batch.commit()
    with pytest.raises(SinkUnavailable, match="still unreachable at stop"):
        batch.flush()
    sink.down = False
    batch.flush()  # due now, whatever the backoff said
    assert batch.outage is None and stored(sink) == {("order", 1): {"id": 1, "v": 1}}


def test_a_sink_back_but_refusing_the_batch_rolls_back_and_raises(tmp_path: Path) -> None:
    """A refusal (plain SinkError) after the outage is what it is without one: rollback, raise, no outage."""
    clock = Clock()
    batch, sink = make(tmp_path, clock)
    sink.down = True
    batch.apply(order(1, v=1), T0)
    batch.apply(order(2, big=2**70), T0)  # JSON cannot hold it
    batch.commit()
    sink.down = False
    assert batch.outage is not None
    clock.now = batch.outage.retry_at
    with pytest.raises(SinkError) as caught:
        batch.commit()
    assert not isinstance(caught.value, SinkUnavailable)
    assert batch.outage is None and dict(batch.mirror.items()) == {}


def test_large_entities_overflow_the_outage_on_bytes_before_the_record_count(tmp_path: Path) -> None:
    """A few large entities fill the outage's byte bound long before OUTAGE_BATCHES x batch_max records: they are
    dropped, and the recovering write brings the sink to the mirror's state as for any overflow."""
    clock = Clock()
    batch, sink = make(tmp_path, clock)
    batch.apply(order(1, v=0), T0)
    batch.commit()
    sink.down = True
    batch.apply(order(1, v=1), T0)
    batch.commit()
    assert batch.outage is not None
    big = "x" * (1024 * 1024)
    fits = OUTAGE_BYTES // len(big) - 1  # records of a little more than 1 MiB of JSON each
    assert fits + 2 < OUTAGE_BATCHES * BATCH_MAX, "the record count alone would keep them all"
    with capture_logs() as logs:
        for n in range(fits + 2):
            batch.apply(order(1, v=n + 2, blob=big), T0)
    assert [line["event"] for line in logs] == ["sink_buffer_overflowed"]
    assert logs[0]["held_bytes"] <= OUTAGE_BYTES and logs[0]["held"] < fits + 2
    assert batch._pending == [] and batch.outage.overflowed
    sink.down = False
    clock.now = batch.outage.retry_at
    batch.commit()
    assert stored(sink) == dict(batch.mirror.items()) == {("order", 1): {"id": 1, "v": fits + 3, "blob": big}}
