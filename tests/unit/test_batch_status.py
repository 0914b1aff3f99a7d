"""Unit tests for the freshness row a batch writes: in each batch's transaction, alone on state changes, never ahead."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import structlog

from shardsync.ipc import ShardState
from shardsync.mirror import Mirror
from shardsync.protocol import PropsEvent
from shardsync.sinks import Freshness, SinkError, SinkState, open_sink
from shardsync.sinks.sqlite import SqliteSink
from shardsync.worker.batch import Batch
from shardsync.worker.freshness import StatusRow
from shardsync.worker.parent import Vitals

E = 1_714_564_800.0  # 2024-05-01T12:00:00Z
T0 = "2024-05-01T12:00:00.000Z"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Rig:
    """A batch over a real sqlite sink with a status row, a monotonic and a wall clock that tests move."""

    def __init__(self, tmp_path: Path) -> None:
        sink = open_sink("sqlite", path=str(tmp_path), remainder=0, divisor=1)
        assert isinstance(sink, SqliteSink)
        self.sink = sink
        self.clock = Clock(100.0)
        self.wall = Clock(E)
        self.vitals = Vitals(state=ShardState.SYNCING)
        ids = iter(f"s{n}" for n in range(1, 100))
        self.status = StatusRow(0, 1, "modAccountId", sink.status(), session_id=lambda: next(ids))
        self.batch = Batch(sink, Mirror(sink.load()), batch_max=100, flush_interval=0.05, clock=self.clock,
                           vitals=self.vitals, log=structlog.get_logger(), wall=self.wall, status=self.status)
        self.file = tmp_path / "shard-000-of-001.sqlite3"

    def row(self) -> Freshness | None:
        return self.sink.status()


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    r = Rig(tmp_path)
    yield r
    r.sink.close()


def order(ident: int) -> PropsEvent:
    return PropsEvent("order", "Created", ({"id": ident},))


def test_the_reconcile_batch_writes_live_with_snapshot_at_its_commit_time(rig: Rig) -> None:
    """The snapshot's batch says live, snapshot_at = last_commit_at = its commit, last_event_at = the last frame."""
    rig.status.new_session()
    rig.vitals.last_event_at = E - 1
    rig.batch.reconcile({("order", 1): {"id": 1}}, received_at=T0)
    rig.batch.commit(state=SinkState.LIVE, snapshot=True)
    assert rig.row() == Freshness(0, 1, "modAccountId", SinkState.LIVE, T0, "2024-05-01T11:59:59.000Z", T0, "s1")


def test_a_snapshot_that_changed_nothing_still_moves_snapshot_at(rig: Rig) -> None:
    """An empty reconcile batch writes the row alone with the new snapshot_at (last_commit_at stays)."""
    rig.status.new_session()
    rig.batch.reconcile({("order", 1): {"id": 1}}, received_at=T0)
    rig.batch.commit(state=SinkState.LIVE, snapshot=True)
    rig.wall.now = E + 30
    assert rig.batch.reconcile({("order", 1): {"id": 1}}, received_at=T0) == 0
    rig.batch.commit(state=SinkState.LIVE, snapshot=True)
    row = rig.row()
    assert row is not None and row.snapshot_at == "2024-05-01T12:00:30.000Z" and row.last_commit_at == T0


def test_every_batch_carries_the_row_and_keeps_snapshot_at(rig: Rig) -> None:
    """A live batch moves last_commit_at and last_event_at; snapshot_at stays the snapshot's."""
    rig.status.new_session()
    rig.batch.reconcile({("order", 1): {"id": 1}}, received_at=T0)
    rig.batch.commit(state=SinkState.LIVE, snapshot=True)
    rig.vitals.state = ShardState.LIVE
    rig.wall.now, rig.vitals.last_event_at = E + 5, E + 4.5
    rig.batch.apply(order(2), T0)
    rig.batch.commit()
    assert rig.row() == Freshness(0, 1, "modAccountId", SinkState.LIVE, T0, "2024-05-01T12:00:04.500Z",
                                  "2024-05-01T12:00:05.000Z", "s1")


def test_a_refused_batch_leaves_the_row_as_it_was(rig: Rig) -> None:
    """When the transaction fails the row is not written and the next row does not claim that commit."""
    rig.batch.apply(order(1), T0)
    rig.batch.commit()
    before = rig.row()
    rig.wall.now = E + 60
    rig.batch.apply(PropsEvent("order", "Created", ({"id": 2, "big": 2**70},)), T0)  # JSON cannot hold it
    with pytest.raises(SinkError):
        rig.batch.commit()
    assert rig.row() == before
    assert rig.status.row(SinkState.LIVE, event_at=None).last_commit_at == T0


def test_restate_writes_only_when_the_state_or_session_changed(rig: Rig) -> None:
    """A state change rewrites the row alone; the same state and session again writes nothing."""
    rig.batch.restate()
    assert rig.row() is not None and rig.row().state == SinkState.SYNCING  # type: ignore[union-attr]
    written_at = rig.status.written_at
    rig.clock.now += 1
    rig.batch.restate()
    assert rig.status.written_at == written_at
    rig.vitals.state = ShardState.BACKOFF
    rig.batch.restate()
    assert rig.row().state == SinkState.BACKOFF and rig.status.written_at == rig.clock.now  # type: ignore[union-attr]


def test_restate_logs_a_failed_write_and_never_raises(rig: Rig) -> None:
    """A status row that cannot be written costs a warning, not the session."""
    rig.sink._connection().execute("PRAGMA busy_timeout = 20")  # fail fast on the lock below
    blocker = sqlite3.connect(rig.file, timeout=0, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with structlog.testing.capture_logs() as logs:
            rig.batch.restate()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert [entry["event"] for entry in logs] == ["status_write_failed"]
    assert rig.status.written is None


def test_the_final_flush_says_stopped(rig: Rig) -> None:
    """On the way out (state stopping) the last batch's row says stopped."""
    rig.batch.apply(order(1), T0)
    rig.vitals.state = ShardState.STOPPING
    rig.batch.commit()
    assert rig.row().state == SinkState.STOPPED  # type: ignore[union-attr]


def test_prune_uses_the_wall_clock(rig: Rig) -> None:
    """Batch.prune removes change-log rows older than the retention, counted from the wall clock."""
    rig.batch.apply(order(1), "2024-05-01T11:00:00.000Z")
    rig.batch.apply(order(2), "2024-05-01T11:59:00.000Z")
    rig.batch.commit()
    assert rig.batch.prune(1800.0) == 1
    assert rig.batch.prune(1800.0) == 0
