"""Refused entities in the worker's rooms: the snapshot assembler hands them over, the batch logs, counts and keeps
them (origin rejected), a refused snapshot entity keeps its stored row, and floods of lines are limited."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import structlog

from shardsync import protocol as p
from shardsync.mirror import Mirror
from shardsync.protocol import PropsEvent, Rejected, Response, SystemEvent
from shardsync.quarantine import SNAPSHOT, TOO_DEEP, refuse
from shardsync.sinks import open_sink
from shardsync.worker.batch import Batch
from shardsync.worker.parent import Vitals
from shardsync.worker.reconcile import Reconciler
from shardsync.worker.snapshot import SnapshotAssembler

T0 = "2024-01-01T00:00:00.000Z"
T1 = "2024-01-01T00:00:01.000Z"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, clock: Clock | None = None, vitals: Vitals | None = None) -> Batch:
    """A batch over a real jsonl sink in ``tmp_path``."""
    sink = open_sink("jsonl", path=str(tmp_path), remainder=0, divisor=1)
    return Batch(sink, Mirror(sink.load()), batch_max=100_000, flush_interval=0.05, clock=clock or Clock(),
                 vitals=vitals or Vitals(), log=structlog.get_logger())


def reconcile(batch: Batch, entities: dict[Any, Any], buffered: list[Any], received_at: str) -> None:
    """Reconcile a complete (single-response) snapshot of ``entities`` with ``buffered`` events, as the session does."""
    assembler = SnapshotAssembler(1, split=False, quiet=1.0)
    assembler.on_response(Response(200, 1, {}), 0.0)
    assembler.entities, assembler.buffered = dict(entities), list(buffered)
    reconciler = Reconciler(batch, ratio=0.5, grace=10.0, clock=Clock(), log=structlog.get_logger())
    reconciler.reconcile(assembler, received_at)


def lines(tmp_path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (tmp_path / "shard-000-of-001.jsonl").read_bytes().splitlines()]


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def decoded(raw: bytes) -> tuple[p.Message, ...]:
    frame = p.decode_frame(raw)
    assert isinstance(frame, p.MessagesFrame)
    return frame.messages


def test_a_refused_props_entity_is_logged_counted_and_kept_as_rejected(tmp_path: Path) -> None:
    """A live event with one bad entity: the good one applies, the bad one is a rejected line, counted, logged."""
    vitals = Vitals()
    batch = make(tmp_path, vitals=vitals)
    messages = decoded(b'a[{"e":"props","d":{"entityType":"order","eventType":"Created","entity":'
                       b'[{"id":1,"accountId":5},{"id":9223372036854775808,"accountId":5}]}}]')
    with structlog.testing.capture_logs() as logs:
        for message in messages:
            assert isinstance(message, PropsEvent | SystemEvent)
            batch.apply(message, T0)
        batch.commit()
    assert dict(batch.mirror.items()) == {("order", 1): {"id": 1, "accountId": 5}}
    written = lines(tmp_path)
    assert [(r["origin"], r["entityType"], r["eventType"], r["accountId"]) for r in written] == [
        ("live", "order", "Created", 5), ("rejected", "order", "Created", 5)]
    assert written[1]["entity"] == {"reason": "id outside signed 64-bit", "entity": {"id": 2**63, "accountId": 5},
                                    "excerpt": '{"id":9223372036854775808,"accountId":5}'}
    assert vitals.quarantined == 1
    (line,) = [entry for entry in logs if entry["event"] == "entity_quarantined"]
    assert line["key"] == "order 9223372036854775808" and line["reason"] == "id outside signed 64-bit"
    assert line["log_level"] == "warning" and line["excerpt"].startswith('{"id":9223372036854775808')


def test_a_too_deep_live_entity_is_refused_and_never_reaches_the_sink_as_data(tmp_path: Path) -> None:
    """A 300-deep entity (orjson reads it, cannot write it): rejected with its scalar fields, the batch commits."""
    deep = orjson.dumps({"id": 4, "accountId": 2, "text": None}).replace(b"null", b"[" * 300 + b"]" * 300)
    messages = decoded(b'a[{"e":"props","d":{"entityType":"order","eventType":"Updated","entity":' + deep + b"}}]")
    batch = make(tmp_path)
    (rejected,) = messages
    assert isinstance(rejected, Rejected)
    batch.apply(rejected, T0)
    batch.commit()
    (row,) = lines(tmp_path)
    assert row["origin"] == "rejected" and row["entity"]["fields"] == {"id": 4, "accountId": 2}
    assert row["entity"]["reason"] == TOO_DEEP and row["accountId"] == 2
    assert batch.mirror.pending == 0 and len(batch.mirror) == 0


def test_a_too_deep_system_payload_is_rejected_whole(tmp_path: Path) -> None:
    """A system event whose payload no sink can write becomes one rejected record named by the event."""
    messages = decoded(b'a[{"e":"clockSync","d":{"deep":' + b"[" * 400 + b"]" * 400 + b"}}]")
    (rejected,) = messages
    assert isinstance(rejected, Rejected)
    batch = make(tmp_path)
    batch.apply(rejected, T0)
    batch.commit()
    (row,) = lines(tmp_path)
    assert (row["origin"], row["entityType"], row["eventType"]) == ("rejected", "clockSync", "Event")


def test_the_snapshot_hands_its_refused_entities_to_the_batch(tmp_path: Path) -> None:
    """A snapshot part with bad entries: the rest assembles, the refusals reach the sink with the snapshot's time."""
    assembler = SnapshotAssembler(1, split=False, quiet=1.0)
    assembler.on_response(Response(200, 1, {"orders": [{"id": 1}, {"id": "x"}, {"id": 3, "t": nested(300)}]}), 0.0)
    assert assembler.complete and set(assembler.entities) == {("order", 1)}
    ((event, stamp),) = assembler.buffered
    assert isinstance(event, Rejected) and stamp == ""
    assert [(r.event_type, r.id) for r in event.refused] == [(SNAPSHOT, None), (SNAPSHOT, 3)]
    vitals = Vitals()
    batch = make(tmp_path, vitals=vitals)
    reconcile(batch, assembler.entities, assembler.buffered, T1)
    written = lines(tmp_path)
    assert [(r["origin"], r["eventType"], r["receivedAt"]) for r in written] == [
        ("snapshot", "Created", T1), ("rejected", SNAPSHOT, T1), ("rejected", SNAPSHOT, T1)]
    assert vitals.quarantined == 2


def test_a_refused_snapshot_entity_keeps_its_stored_row(tmp_path: Path) -> None:
    """An order stored before, refused in the next snapshot: its row stays (not deleted), the refusal is logged."""
    batch = make(tmp_path)
    reconcile(batch, {("order", 1): {"id": 1, "v": 1}, ("order", 2): {"id": 2}}, [], T0)
    refused = Rejected(refused=(refuse("order", SNAPSHOT, {"id": 1, "v": nested(300)}, TOO_DEEP),))
    reconcile(batch, {}, [(refused, "")], T1)
    assert dict(batch.mirror.committed_items()) == {("order", 1): {"id": 1, "v": 1}}
    later = [(r["origin"], r["eventType"], r["entity"].get("id")) for r in lines(tmp_path)[2:]]
    assert later == [("resync", "Deleted", 2), ("rejected", SNAPSHOT, None)]


def test_a_flood_of_system_events_is_kept_whole_and_logged_once(tmp_path: Path) -> None:
    """10,000 unknown events: every one in the change log, one log line (the rest counted for the next)."""
    clock = Clock()
    batch = make(tmp_path, clock)
    with structlog.testing.capture_logs() as logs:
        for i in range(10_000):
            batch.apply(SystemEvent("mysteryEvent", {"n": i}), T0)
        batch.commit()
        clock.now += 10.0
        batch.due(lambda: False)  # the session's every pass: held lines are summarised after the interval
    assert [r["entity"]["n"] for r in lines(tmp_path)] == list(range(10_000))
    assert [(e["event"], e.get("held")) for e in logs] == [("system_event", None), ("log_lines_held", 9_999)]


def test_the_mirror_compares_values_too_deep_for_python_without_raising() -> None:
    """Two equal values 5,000 deep (== raises RecursionError on them): the mirror stores again instead of raising."""
    first, second = {"id": 1, "t": nested(5000)}, {"id": 1, "t": nested(5000)}
    mirror = Mirror([("order", 1, first)])
    changes = mirror.diff_props("order", "Updated", [second], received_at=T0)
    assert [c.event_type for c in changes] == ["Updated"]
    third, fourth = {"id": 1, "t": nested(5000)}, {"id": 1, "t": nested(5000)}
    assert [c.event_type for c in mirror.diff_props("order", "Updated", [third, fourth], received_at=T0)] == [
        "Updated", "Updated"]
    assert [c.event_type for c in Mirror([("order", 1, first)]).diff_snapshot(
        {("order", 1): second}, types=None, received_at=T0)] == ["Updated"]
