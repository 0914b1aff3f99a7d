"""Unit tests for a live worker's upkeep: the freshness row at least every heartbeat_interval, retention when quiet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog

from shardsync.ipc import ShardState
from shardsync.mirror import Mirror
from shardsync.protocol import PropsEvent
from shardsync.sinks import SinkState, open_sink
from shardsync.sinks.base import PRUNE_BATCH
from shardsync.worker.batch import Batch
from shardsync.worker.freshness import StatusRow
from shardsync.worker.parent import Vitals
from shardsync.worker.upkeep import PRUNE_BACKLOG, PRUNE_EVERY, Upkeep

E = 1_714_564_800.0  # 2024-05-01T12:00:00Z


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, tmp_path: Path, *, retention: float = 3600.0) -> None:
        self.sink = open_sink("sqlite", path=str(tmp_path), remainder=0, divisor=1)
        self.clock, self.wall = Clock(100.0), Clock(E)
        self.vitals = Vitals(state=ShardState.LIVE)
        self.status = StatusRow(0, 1, "modAccountId")
        self.batch = Batch(self.sink, Mirror(), batch_max=10_000, flush_interval=0.05, clock=self.clock,
                           vitals=self.vitals, log=structlog.get_logger(), wall=self.wall, status=self.status)
        self.announced: list[float] = []
        self.upkeep = Upkeep(self.batch, heartbeat_interval=1.0, retention=retention, slow_prune=True,
                             announce=self.announced.append, clock=self.clock, log=structlog.get_logger())

    def old_events(self, count: int, start: int = 0) -> None:
        for ident in range(start, start + count):
            self.batch.apply(PropsEvent("order", "Created", ({"id": ident},)), "2024-05-01T10:00:00.000Z")
        self.batch.commit()


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    r = Rig(tmp_path)
    yield r
    r.sink.close()


def never() -> bool:
    return False


def test_the_row_is_rewritten_once_heartbeat_interval_passed_without_a_batch(rig: Rig) -> None:
    """Right after a write nothing is due; a heartbeat_interval later the row goes out alone (live, new event time)."""
    rig.old_events(1)
    written = rig.status.written_at
    assert rig.upkeep.deadline() == written + 1.0
    rig.clock.now = written + 0.5
    rig.upkeep.run(rig.clock.now, never)
    assert rig.status.written_at == written
    rig.clock.now, rig.vitals.last_event_at = written + 1.0, E + 3
    rig.upkeep.run(rig.clock.now, never)
    assert rig.status.written_at == rig.clock.now
    row = rig.sink.status()  # type: ignore[attr-defined]
    assert row.state == SinkState.LIVE and row.last_event_at == "2024-05-01T12:00:03.000Z"


def test_prune_runs_when_quiet_and_paces_itself(rig: Rig) -> None:
    """A full batch pruned: again soon (backlog); less than that: again after PRUNE_EVERY; jsonl-style announced."""
    rig.old_events(PRUNE_BATCH + 10)
    rig.upkeep.run(rig.clock.now, never)
    assert rig.upkeep.pruned == PRUNE_BATCH and rig.announced == [60.0]
    rig.clock.now += PRUNE_BACKLOG - 0.01
    rig.upkeep.run(rig.clock.now, never)
    assert rig.upkeep.pruned == PRUNE_BATCH
    rig.clock.now += 0.01
    rig.upkeep.run(rig.clock.now, never)
    # The sqlite sink keeps its newest row (its seq must never restart), however old.
    assert rig.upkeep.pruned == PRUNE_BATCH + 9
    rig.old_events(5, start=10_000)
    rig.clock.now += PRUNE_EVERY - 0.01
    rig.upkeep.run(rig.clock.now, never)
    assert rig.upkeep.pruned == PRUNE_BATCH + 9
    rig.clock.now += 0.01
    rig.upkeep.run(rig.clock.now, never)
    assert rig.upkeep.pruned == PRUNE_BATCH + 14


def test_no_prune_while_input_waits(rig: Rig) -> None:
    """With frames waiting on the socket the prune is put off (briefly), never run."""
    rig.old_events(3)
    rig.upkeep.run(rig.clock.now, lambda: True)
    assert rig.upkeep.pruned == 0
    rig.clock.now += PRUNE_BACKLOG
    rig.upkeep.run(rig.clock.now, never)
    assert rig.upkeep.pruned == 2  # all but the newest row


def test_zero_retention_never_prunes(tmp_path: Path) -> None:
    """events_retention 0 keeps everything: prune is not even tried."""
    rig = Rig(tmp_path, retention=0.0)
    try:
        rig.old_events(3)
        rig.upkeep.run(rig.clock.now, never)
        assert rig.upkeep.pruned == 0 and rig.announced == []
    finally:
        rig.sink.close()
