"""Unit tests for the snapshot assembler: one or several parts, end markers, the quiet rule, refusals."""

from __future__ import annotations

from typing import Any

import pytest

from shardsync.mirror import Mirror
from shardsync.protocol import PropsEvent, ProtocolError, Response, SystemEvent
from shardsync.worker.snapshot import MAX_QUIET, SnapshotAssembler, SyncRejected

SYNC = 1


def part(data: Any, status: int = 200) -> Response:
    return Response(status=status, id=SYNC, data=data)


def props(ident: int) -> PropsEvent:
    return PropsEvent("order", "Updated", ({"id": ident},))


def test_unsplit_single_response_is_the_whole_snapshot() -> None:
    """Without splitting, the first successful response completes the snapshot with all its entities (as JSON text)."""
    a = SnapshotAssembler(SYNC, split=False, quiet=1.0)
    assert not a.complete and a.deadline() is None
    a.on_response(part({"users": [{"id": 1}], "positions": [{"id": 2}, {"id": 3}], "accounts": None}), 5.0)
    assert a.complete and a.check(5.0) and a.parts == 1
    assert a.entities == {("user", 1): '{"id":1}', ("position", 2): '{"id":2}', ("position", 3): '{"id":3}'}
    assert a.deadline() is None


def test_unsplit_response_without_a_body_is_a_protocol_error() -> None:
    """An unsplit sync answer with no body is malformed, not an empty snapshot."""
    a = SnapshotAssembler(SYNC, split=False, quiet=1.0)
    with pytest.raises(ProtocolError, match="without a body"):
        a.on_response(part(None), 0.0)
    assert not a.complete


@pytest.mark.parametrize(
    "end",
    [{}, None, *({flag: True} for flag in ("done", "end", "last", "complete", "completed", "final", "eos"))],
    ids=lambda end: "null" if end is None else (next(iter(end)) if end else "empty"),
)
def test_split_parts_complete_at_each_end_marker(end: Any) -> None:
    """Split parts accumulate until a same-id part carries an end marker (empty body, null or a true flag)."""
    a = SnapshotAssembler(SYNC, split=True, quiet=1.0)
    a.on_response(part({"users": [{"id": 1}], "done": False}), 0.0)
    a.on_response(part({"positions": [{"id": 2}]}), 0.1)
    assert not a.complete and not a.check(0.2)
    a.on_response(part(end), 0.2)
    assert a.complete and a.check(0.2) and a.parts == 3
    assert set(a.entities) == {("user", 1), ("position", 2)}
    assert a.deadline() is None


def test_a_flag_beside_a_collection_is_not_an_end_marker() -> None:
    """A part holding entities and a true flag is an ordinary part: the quiet rule still decides."""
    a = SnapshotAssembler(SYNC, split=True, quiet=1.0)
    a.on_response(part({"users": [{"id": 1}], "done": True}), 0.0)
    assert not a.complete and a.deadline() == 1.0


def test_quiet_rule_completes_after_no_part_for_quiet_seconds() -> None:
    """Without an end marker, the snapshot completes ``quiet`` seconds after the last part, and each part resets it."""
    a = SnapshotAssembler(SYNC, split=True, quiet=0.5)
    assert not a.check(100.0)  # no part yet: nothing to wait for
    a.on_response(part({"users": [{"id": 1}]}), 10.0)
    assert a.deadline() == 10.5
    assert not a.check(10.49)
    a.on_response(part({"users": [{"id": 2}]}), 10.4)
    assert a.deadline() == pytest.approx(10.9)
    assert not a.check(10.6)
    assert a.check(10.9) and a.complete
    assert set(a.entities) == {("user", 1), ("user", 2)}


def test_props_between_parts_do_not_extend_the_quiet_period() -> None:
    """Events arriving between parts leave the quiet deadline where the last part put it."""
    a = SnapshotAssembler(SYNC, split=True, quiet=0.5)
    a.on_response(part({"users": [{"id": 1}]}), 1.0)
    for ident in range(5):
        a.on_event(props(ident), f"t{ident}")
    assert a.deadline() == 1.5 and a.check(1.5)


def test_events_are_buffered_in_order_with_their_receive_times() -> None:
    """Props and system events that arrive before completion come back in arrival order, each with its time."""
    a = SnapshotAssembler(SYNC, split=True, quiet=1.0)
    alert = SystemEvent("alertSignal", {"id": 9})
    a.on_event(props(1), "2024-01-01T00:00:00.001Z")
    a.on_response(part({"users": [{"id": 1}]}), 0.0)
    a.on_event(alert, "2024-01-01T00:00:00.002Z")
    a.on_event(props(2), "2024-01-01T00:00:00.003Z")
    a.on_response(part({}), 0.1)
    assert a.buffered == [
        (props(1), "2024-01-01T00:00:00.001Z"),
        (alert, "2024-01-01T00:00:00.002Z"),
        (props(2), "2024-01-01T00:00:00.003Z"),
    ]


def test_a_later_part_replaces_an_entity_of_the_same_key() -> None:
    """The same key in two parts keeps the later part's entity."""
    a = SnapshotAssembler(SYNC, split=True, quiet=1.0)
    a.on_response(part({"orders": [{"id": 4, "v": 1}]}), 0.0)
    a.on_response(part({"orders": [{"id": 4, "v": 2}]}), 0.1)
    assert a.entities == {("order", 4): '{"id":4,"v":2}'}


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize(("status", "data"), [(400, "Only one user/syncrequest"), (429, "Too many"), (503, "busy")])
def test_refusals_raise_sync_rejected_with_status_and_text(split: bool, status: int, data: Any) -> None:
    """A non-2xx answer is a refusal carrying its status and text, and nothing is taken from it."""
    a = SnapshotAssembler(SYNC, split=split, quiet=1.0)
    with pytest.raises(SyncRejected) as info:
        a.on_response(part(data, status), 0.0)
    assert info.value.status == status
    assert info.value.text == data
    assert a.parts == 0 and not a.complete and a.entities == {}


def test_a_time_penalty_answer_is_a_refusal() -> None:
    """A 200 answer carrying a p-ticket is refused as a time penalty, not taken as an (empty) snapshot."""
    a = SnapshotAssembler(SYNC, split=True, quiet=1.0)
    with pytest.raises(SyncRejected) as info:
        a.on_response(part({"p-ticket": "abc", "p-time": 15}), 0.0)
    assert info.value.status == 200 and "p-ticket" in info.value.text
    assert not a.complete and a.parts == 0


def test_late_part_doubles_the_quiet_period_up_to_the_cap() -> None:
    """A data part after completion asks for a resync with twice the quiet period, never above MAX_QUIET."""
    a = SnapshotAssembler(SYNC, split=True, quiet=0.75)
    a.on_response(part({"users": [{"id": 1}]}), 0.0)
    assert a.check(1.0)
    assert a.on_late(part({"users": [{"id": 2}]})) == 1.5
    assert a.entities == {("user", 1): '{"id":1}'}  # never merged
    capped = SnapshotAssembler(SYNC, split=True, quiet=MAX_QUIET * 0.75)
    assert capped.on_late(part({"users": [{"id": 2}]})) == MAX_QUIET


def test_late_end_marker_changes_nothing_and_late_refusal_raises() -> None:
    """After completion, an end marker is ignored and a refusal is still a refusal."""
    a = SnapshotAssembler(SYNC, split=True, quiet=1.0)
    a.on_response(part({"users": [{"id": 1}]}), 0.0)
    assert a.check(1.0)
    assert a.on_late(part({})) is None
    assert a.on_late(part({"done": True})) is None
    with pytest.raises(SyncRejected) as info:
        a.on_late(part("Too many", 429))
    assert info.value.status == 429


def test_how_a_snapshot_completed_is_recorded() -> None:
    """Unsplit: single; an end marker after a part: marker; the quiet rule: quiet, the only inferred one."""
    single = SnapshotAssembler(SYNC, split=False, quiet=1.0)
    single.on_response(part({"users": [{"id": 1}]}), 0.0)
    assert single.completion == "single" and not single.inferred
    marked = SnapshotAssembler(SYNC, split=True, quiet=1.0)
    marked.on_response(part({"users": [{"id": 1}]}), 0.0)
    assert marked.completion is None
    marked.on_response(part({}), 0.1)
    assert marked.completion == "marker" and not marked.inferred
    quiet = SnapshotAssembler(SYNC, split=True, quiet=1.0)
    quiet.on_response(part({"users": [{"id": 1}]}), 0.0)
    assert quiet.check(1.0) and quiet.completion == "quiet" and quiet.inferred


@pytest.mark.parametrize("first", [{}, None, {"done": True}], ids=["empty", "null", "flag"])
def test_an_empty_or_marker_only_first_part_completes_nothing_by_itself(first: Any) -> None:
    """A first part that is only an end marker waits for the quiet rule (or a later marker); it is a part."""
    a = SnapshotAssembler(SYNC, split=True, quiet=1.0)
    a.on_response(part(first), 0.0)
    assert not a.complete and a.parts == 1 and a.deadline() == 1.0
    a.on_response(part({"users": [{"id": 1}]}), 0.5)
    a.on_response(part({}), 0.6)
    assert a.complete and a.completion == "marker" and set(a.entities) == {("user", 1)}
    alone = SnapshotAssembler(SYNC, split=True, quiet=1.0)
    alone.on_response(part(first), 0.0)
    assert alone.check(1.0) and alone.inferred and alone.entities == {}


def test_bounds_name_the_one_exceeded() -> None:
    """Entities over max_entities, bytes over max_bytes, time since the syncrequest at timeout: each named."""
    a = SnapshotAssembler(SYNC, split=True, quiet=1.0, started=100.0, timeout=60.0, max_bytes=1000, max_entities=2)
    assert a.exceeded(100.0, 1000) is None
    assert a.exceeded(100.0, 1001) == "max_snapshot_bytes"
    assert a.exceeded(160.0, 0) == "snapshot_timeout"
    a.on_response(part({"users": [{"id": 1}, {"id": 2}, {"id": 3}]}), 101.0)
    assert a.exceeded(101.0, 0) == "max_snapshot_entities"


def test_a_complete_snapshot_exceeds_nothing() -> None:
    """Once complete, no bound applies any more (the next step is its reconciliation)."""
    a = SnapshotAssembler(SYNC, split=False, quiet=1.0, started=0.0, timeout=1.0, max_bytes=1, max_entities=0)
    a.on_response(part({"users": [{"id": 1}]}), 0.0)
    assert a.exceeded(100.0, 10**9) is None and a.next_due() is None


def test_next_due_is_the_quiet_deadline_or_the_time_bound_whichever_first() -> None:
    """Before any part only the time bound runs; with parts the earlier of quiet and bound."""
    a = SnapshotAssembler(SYNC, split=True, quiet=1.0, started=10.0, timeout=5.0)
    assert a.next_due() == 15.0
    a.on_response(part({"users": [{"id": 1}]}), 11.0)
    assert a.next_due() == 12.0
    a.on_response(part({"users": [{"id": 2}]}), 14.5)
    assert a.next_due() == 15.0


def test_release_drops_what_was_assembled() -> None:
    """After reconciliation the assembler keeps neither entities nor buffered events."""
    a = SnapshotAssembler(SYNC, split=False, quiet=1.0)
    a.on_event(props(1), "t")
    a.on_response(part({"users": [{"id": 1}]}), 0.0)
    a.release()
    assert a.entities == {} and a.buffered == [] and a.complete


def test_an_unchanged_entity_shares_the_mirrors_text() -> None:
    """With ``held`` (the mirror's committed slots), an entity equal to the held text keeps that very object."""
    mirror = Mirror([("user", 1, {"id": 1, "name": "a"}), ("user", 2, {"id": 2, "name": "b"})])
    a = SnapshotAssembler(SYNC, split=False, quiet=1.0, held=mirror.committed_slot())
    a.on_response(part({"users": [{"id": 1, "name": "a"}, {"id": 2, "name": "B"}, {"id": 3}]}), 5.0)
    assert a.entities[("user", 1)] is mirror.slot(("user", 1))
    assert a.entities[("user", 2)] == '{"id":2,"name":"B"}' and a.entities[("user", 3)] == '{"id":3}'
