"""Unit tests for the worker's batch: commit then ack, rollback on a failed write, when to commit, what is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from shardsync.mirror import Mirror
from shardsync.protocol import PropsEvent, SystemEvent
from shardsync.sinks import SinkError, open_sink
from shardsync.worker.batch import Batch
from shardsync.worker.options import WorkerOptions
from shardsync.worker.parent import Vitals

T0 = "2024-01-01T00:00:00.000Z"
T1 = "2024-01-01T00:00:01.000Z"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, clock: Clock | None = None, vitals: Vitals | None = None, **kwargs: Any) -> Batch:
    """A batch over a real jsonl sink in ``tmp_path``."""
    sink = open_sink("jsonl", path=str(tmp_path), remainder=0, divisor=1)
    options: dict[str, Any] = {"batch_max": 100, "flush_interval": 0.05}
    options.update(kwargs)
    return Batch(
        sink, Mirror(sink.load()), clock=clock or Clock(), vitals=vitals or Vitals(), log=structlog.get_logger(),
        **options,
    )


def lines(tmp_path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (tmp_path / "shard-000-of-001.jsonl").read_bytes().splitlines()]


def order(ident: int, **extra: Any) -> PropsEvent:
    return PropsEvent("order", "Updated", ({"id": ident, **extra},))


def test_commit_writes_the_sink_first_then_acknowledges_the_mirror(tmp_path: Path) -> None:
    """Applied changes stay pending (not in the sink, not committed) until commit writes and then acknowledges them."""
    batch = make(tmp_path)
    batch.apply(order(1, v=1), T0)
    assert batch.mirror.pending == 1 and dict(batch.mirror.committed_items()) == {}
    assert lines(tmp_path) == []
    batch.commit()
    assert [(r["origin"], r["entityType"], r["entity"], r["receivedAt"]) for r in lines(tmp_path)] == [
        ("live", "order", {"id": 1, "v": 1}, T0)
    ]
    assert dict(batch.mirror.committed_items()) == {("order", 1): {"id": 1, "v": 1}} and batch.mirror.pending == 0
    batch.commit()  # nothing pending: nothing written
    assert len(lines(tmp_path)) == 1


def test_a_failed_write_rolls_the_mirror_back_and_drops_the_batch(tmp_path: Path) -> None:
    """When the sink refuses a batch, the mirror returns to what the sink holds and the batch is gone."""
    batch = make(tmp_path)
    batch.apply(order(1, v=1), T0)
    batch.commit()
    batch.apply(order(1, v=2), T1)
    batch.apply(order(2, big=2**70), T1)  # JSON cannot hold it: the sink refuses the whole batch
    with pytest.raises(SinkError):
        batch.commit()
    assert dict(batch.mirror.items()) == dict(batch.mirror.committed_items()) == {("order", 1): {"id": 1, "v": 1}}
    assert batch.mirror.pending == 0 and batch.room() == 100
    assert len(lines(tmp_path)) == 1
    batch.commit()
    assert len(lines(tmp_path)) == 1
    assert batch._vitals.sink_errors == 1  # counted for the sink-error metric
    assert batch._vitals.commits[-1] == 1  # only the good commit is timed


def test_due_commits_at_once_when_nothing_more_is_waiting(tmp_path: Path) -> None:
    """An empty batch is never due; a non-empty one is due as soon as no more input waits."""
    batch = make(tmp_path)
    assert not batch.due(lambda: False)
    batch.apply(order(1), T0)
    assert not batch.due(lambda: True)
    assert batch.due(lambda: False)


def test_due_when_full_or_old_even_while_input_waits(tmp_path: Path) -> None:
    """Under load the batch grows, but is due at batch_max changes or flush_interval seconds of age."""
    clock = Clock()
    # Binary fractions, so "exactly flush_interval old" is exact.
    batch = make(tmp_path, clock, batch_max=3, flush_interval=0.25)
    batch.apply(order(1), T0)
    clock.now += 0.125
    batch.apply(order(2), T0)
    assert not batch.due(lambda: True) and batch.room() == 1
    clock.now += 0.125  # the oldest change is exactly flush_interval old now
    assert batch.due(lambda: True)
    clock.now -= 0.125
    batch.apply(order(3), T0)
    assert batch.room() == 0 and batch.due(lambda: True)


def test_age_counts_from_the_first_pending_change(tmp_path: Path) -> None:
    """A commit restarts the age: the next batch's clock starts with its own first change."""
    clock = Clock()
    batch = make(tmp_path, clock, flush_interval=0.05)
    batch.apply(order(1), T0)
    batch.commit()
    clock.now += 10.0
    batch.apply(order(2), T0)
    assert not batch.due(lambda: True)


def test_events_are_counted_and_redelivery_keeps_nothing(tmp_path: Path) -> None:
    """Every props event counts, but one that changes nothing leaves nothing pending."""
    vitals = Vitals()
    batch = make(tmp_path, vitals=vitals)
    batch.apply(order(1), T0)
    batch.commit()
    batch.apply(order(1), T1)
    assert batch.mirror.pending == 0 and batch.room() == 100
    assert vitals.events == 2


def test_system_and_unusable_events_are_kept_as_system_records(tmp_path: Path) -> None:
    """A system event, and props the mirror cannot apply (unknown eventType), are logged as system records."""
    vitals = Vitals()
    batch = make(tmp_path, vitals=vitals)
    batch.apply(SystemEvent("alertSignal", {"text": "liquidate"}), T0)
    batch.apply(PropsEvent("order", "Replaced", ({"id": 1},)), T1)
    batch.commit()
    assert [(r["origin"], r["entityType"], r["entity"], r["receivedAt"]) for r in lines(tmp_path)] == [
        ("system", "alertSignal", {"text": "liquidate"}, T0),
        ("system", "props", {"entityType": "order", "eventType": "Replaced", "entity": [{"id": 1}]}, T1),
    ]
    assert len(batch.mirror) == 0 and vitals.events == 0


def test_reconcile_diffs_the_snapshot_into_the_pending_batch_with_its_time(tmp_path: Path) -> None:
    """A snapshot's changes join the pending batch stamped with the snapshot's time; commit writes them."""
    batch = make(tmp_path)
    snapshot = {("order", 1): {"id": 1, "v": 0}, ("order", 2): {"id": 2, "v": 0}}
    assert batch.reconcile(snapshot, received_at="2024-01-01T00:00:05.000Z") == 2
    assert batch.mirror.pending == 2 and lines(tmp_path) == []
    batch.commit()
    assert [(r["origin"], r["entity"], r["receivedAt"]) for r in lines(tmp_path)] == [
        ("snapshot", {"id": 1, "v": 0}, "2024-01-01T00:00:05.000Z"),
        ("snapshot", {"id": 2, "v": 0}, "2024-01-01T00:00:05.000Z"),
    ]


def test_reconcile_deletes_only_what_it_is_told_and_delete_finishes_later(tmp_path: Path) -> None:
    """With ``deleting`` narrowed, vanished keys outside it stay; Batch.delete removes them later as resync changes."""
    batch = make(tmp_path)
    for ident in (1, 2, 3):
        batch.apply(order(ident), T0)
    batch.commit()
    assert batch.reconcile({("order", 1): {"id": 1}}, received_at=T1, deleting=[("order", 2)]) == 1
    batch.commit()
    assert sorted(k for k, _ in batch.mirror.items()) == [("order", 1), ("order", 3)]
    assert batch.delete([("order", 2), ("order", 3)], origin="resync", received_at=T1) == 1
    batch.commit()
    # The first snapshot of this mirror deletes as "snapshot"; the later deletion carries the origin it is given.
    assert [(r["origin"], r["eventType"], r["entity"]["id"]) for r in lines(tmp_path)[3:]] == [
        ("snapshot", "Deleted", 2), ("resync", "Deleted", 3)]
    assert sorted(k for k, _ in batch.mirror.items()) == [("order", 1)]


def test_open_loads_the_mirror_from_the_sink_and_announces_the_load(tmp_path: Path) -> None:
    """Batch.open preloads the mirror from what the sink holds, after telling the parent it may take a while."""
    first = make(tmp_path)
    first.apply(order(7, v=1), T0)
    first.commit()
    first.sink.close()
    options = WorkerOptions(
        ws_url="ws://x", divisor=1, expression="modAccountId", entity_types=("order",), sink_kind="jsonl",
        sink_path=str(tmp_path),
    )
    announced: list[float] = []
    vitals = Vitals()
    batch = Batch.open(options, 0, announce=announced.append, clock=Clock(), vitals=vitals, log=structlog.get_logger())
    try:
        assert dict(batch.mirror.committed_items()) == {("order", 7): {"id": 7, "v": 1}}
        assert announced == [60.0] and vitals.mirror is batch.mirror
    finally:
        batch.sink.close()
