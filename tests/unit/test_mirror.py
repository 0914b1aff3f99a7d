"""Unit tests for the shard mirror: diffing rules, pending overlay, commit/rollback."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from shardsync.change import Change
from shardsync.mirror import Key, Mirror, MirrorError, key_of

T = "2024-01-01T00:00:00Z"


def order(ident: int, status: str = "Working", **extra: Any) -> dict[str, Any]:
    return {"id": ident, "accountId": 7, "ordStatus": status, **extra}


def pos(ident: int, net: int = 1) -> dict[str, Any]:
    return {"id": ident, "accountId": 7, "netPos": net}


def snap(*pairs: tuple[str, dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    return {key_of(t, e): e for t, e in pairs}


def summary(changes: list[Change]) -> list[tuple[str, str, str, int | None]]:
    return [(c.origin, c.entity_type, c.event_type, c.id) for c in changes]


def state(mirror: Mirror) -> dict[Key, dict[str, Any]]:
    return dict(mirror.items())


def committed(mirror: Mirror) -> dict[Key, dict[str, Any]]:
    return dict(mirror.committed_items())


# -- snapshots -----------------------------------------------------------------


def test_first_snapshot_of_a_fresh_mirror_has_origin_snapshot() -> None:
    """A fresh mirror reports every entity of its first snapshot as Created with origin snapshot."""
    m = Mirror()
    assert not m.snapshot_seen
    changes = m.diff_snapshot(snap(("order", order(1)), ("position", pos(2))), types=None, received_at=T)
    assert summary(changes) == [
        ("snapshot", "order", "Created", 1),
        ("snapshot", "position", "Created", 2),
    ]
    assert all(c.received_at == T for c in changes)
    assert m.snapshot_seen
    assert len(m) == 2


def test_second_snapshot_has_origin_resync() -> None:
    """Every snapshot after the first is reported with origin resync."""
    m = Mirror()
    m.diff_snapshot(snap(("order", order(1))), types=None, received_at=T)
    m.commit()
    changes = m.diff_snapshot(snap(("order", order(2))), types=None, received_at=T)
    assert {c.origin for c in changes} == {"resync"}


def test_preloaded_mirror_resyncs_with_only_real_differences() -> None:
    """A mirror preloaded from the sink emits only real differences, with origin resync."""
    m = Mirror([("order", 1, order(1)), ("order", 2, order(2)), ("position", 3, pos(3))])
    assert m.snapshot_seen
    changes = m.diff_snapshot(
        snap(
            ("order", order(1)),
            ("order", order(2, "Filled")),
            ("position", pos(4)),
        ),
        types=None,
        received_at=T,
    )
    assert summary(changes) == [
        ("resync", "position", "Deleted", 3),
        ("resync", "order", "Updated", 2),
        ("resync", "position", "Created", 4),
    ]


def test_synced_flag_overrides_the_preload_default() -> None:
    """An empty preload with synced=True resyncs; a non-empty one with synced=False snapshots."""
    fresh = Mirror(synced=True)
    changes = fresh.diff_snapshot(snap(("order", order(1))), types=None, received_at=T)
    assert summary(changes) == [("resync", "order", "Created", 1)]
    m = Mirror([("order", 1, order(1))], synced=False)
    changes = m.diff_snapshot(snap(("order", order(1, "Filled"))), types=None, received_at=T)
    assert summary(changes) == [("snapshot", "order", "Updated", 1)]


def test_snapshot_deleted_change_carries_the_last_known_entity() -> None:
    """A key vanished from the snapshot is Deleted with the mirror's last known entity."""
    last = order(5, "Filled")
    m = Mirror([("order", 5, last)])
    [change] = m.diff_snapshot({}, types=None, received_at=T)
    assert change.event_type == "Deleted" and change.entity == last
    assert change.data == orjson.dumps(last).decode()
    assert m.get(("order", 5)) is None and len(m) == 0


def test_snapshot_order_is_deletes_sorted_then_snapshot_order() -> None:
    """Deleted changes come first in key order, then Created/Updated in snapshot order."""
    m = Mirror([("position", 9, pos(9)), ("order", 8, order(8)), ("order", 3, order(3)), ("fill", 1, {"id": 1})])
    changes = m.diff_snapshot(
        snap(("position", pos(20)), ("order", order(3, "Filled")), ("account", {"id": 1})),
        types=None,
        received_at=T,
    )
    assert summary(changes) == [
        ("resync", "fill", "Deleted", 1),
        ("resync", "order", "Deleted", 8),
        ("resync", "position", "Deleted", 9),
        ("resync", "position", "Created", 20),
        ("resync", "order", "Updated", 3),
        ("resync", "account", "Created", 1),
    ]


def test_identical_snapshot_twice_emits_nothing_the_second_time() -> None:
    """Diffing the same snapshot again, committed or not, emits nothing."""
    s = snap(("order", order(1)), ("position", pos(2)))
    m = Mirror()
    assert m.diff_snapshot(s, types=None, received_at=T)
    assert m.diff_snapshot(s, types=None, received_at=T) == []
    m.commit()
    assert m.diff_snapshot(s, types=None, received_at=T) == []


def test_snapshot_compares_entities_by_value() -> None:
    """An equal but distinct dict is not a change."""
    m = Mirror([("order", 1, order(1))])
    assert m.diff_snapshot(snap(("order", order(1))), types=None, received_at=T) == []


def test_types_scope_ignores_unrequested_and_deletes_stale_types() -> None:
    """With types given, out-of-scope snapshot entities are ignored and out-of-scope mirror entities deleted."""
    m = Mirror([("order", 1, order(1)), ("contract", 50, {"id": 50})])
    changes = m.diff_snapshot(
        snap(("order", order(1)), ("user", {"id": 9}), ("position", pos(2))),
        types=["order", "position"],
        received_at=T,
    )
    assert summary(changes) == [
        ("resync", "contract", "Deleted", 50),
        ("resync", "position", "Created", 2),
    ]
    assert set(state(m)) == {("order", 1), ("position", 2)}


def test_types_none_takes_the_whole_snapshot() -> None:
    """With types=None every snapshot entity is kept, whatever its type."""
    m = Mirror()
    m.diff_snapshot(snap(("user", {"id": 9}), ("order", order(1))), types=None, received_at=T)
    assert set(state(m)) == {("user", 9), ("order", 1)}


def test_types_as_a_bare_string_is_rejected() -> None:
    """Passing a single type name instead of a collection raises MirrorError."""
    with pytest.raises(MirrorError):
        Mirror().diff_snapshot({}, types="order", received_at=T)


# -- live events -----------------------------------------------------------------


def test_live_created_updated_deleted() -> None:
    """Live Created, Updated and Deleted change the state and are emitted with origin live."""
    m = Mirror()
    created = m.diff_event("order", "Created", [order(1)], received_at=T)
    updated = m.diff_event("order", "Updated", [order(1, "Filled")], received_at=T)
    assert m.get(("order", 1)) == order(1, "Filled")
    deleted = m.diff_event("order", "Deleted", [{"id": 1}], received_at=T)
    assert summary(created + updated + deleted) == [
        ("live", "order", "Created", 1),
        ("live", "order", "Updated", 1),
        ("live", "order", "Deleted", 1),
    ]
    assert deleted[0].entity == {"id": 1}
    assert m.get(("order", 1)) is None and len(m) == 0


def test_live_created_for_a_known_id_is_an_upsert_emitted_as_created() -> None:
    """Created for a known id replaces the entity and is emitted as Created."""
    m = Mirror([("order", 1, order(1))])
    changes = m.diff_event("order", "Created", [order(1, "Filled")], received_at=T)
    assert summary(changes) == [("live", "order", "Created", 1)]
    assert m.get(("order", 1)) == order(1, "Filled") and len(m) == 1


def test_live_updated_for_an_unknown_id_is_an_upsert_emitted_as_updated() -> None:
    """Updated for an unknown id inserts the entity and is emitted as Updated."""
    m = Mirror()
    changes = m.diff_event("order", "Updated", [order(4)], received_at=T)
    assert summary(changes) == [("live", "order", "Updated", 4)]
    assert m.get(("order", 4)) == order(4) and len(m) == 1


def test_live_deleted_for_an_unknown_id_is_a_noop() -> None:
    """Deleted for an unknown id changes nothing and emits nothing."""
    m = Mirror([("order", 1, order(1))])
    assert m.diff_event("order", "Deleted", [{"id": 2}], received_at=T) == []
    assert m.diff_event("position", "Deleted", [{"id": 1}], received_at=T) == []
    assert state(m) == {("order", 1): order(1)} and m.pending == 0


def test_duplicate_redelivery_emits_nothing() -> None:
    """Re-delivering an entity the mirror already holds emits nothing, as Created or Updated."""
    m = Mirror()
    assert m.diff_event("order", "Created", [order(1)], received_at=T)
    assert m.diff_event("order", "Created", [order(1)], received_at=T) == []
    assert m.diff_event("order", "Updated", [order(1)], received_at=T) == []
    m.commit()
    assert m.diff_event("order", "Updated", [order(1)], received_at=T) == []
    assert m.pending == 0


def test_entity_lists_apply_in_order() -> None:
    """Each entity of a list is applied in order, later ones seeing earlier ones."""
    m = Mirror()
    changes = m.diff_event("order", "Updated", [order(1), order(2), order(1), order(1, "Filled")], received_at=T)
    assert summary(changes) == [
        ("live", "order", "Updated", 1),
        ("live", "order", "Updated", 2),
        ("live", "order", "Updated", 1),
    ]
    assert state(m) == {("order", 1): order(1, "Filled"), ("order", 2): order(2)}


def test_empty_entity_list_emits_nothing() -> None:
    """An event with no entities is valid and emits nothing."""
    assert Mirror().diff_event("order", "Created", [], received_at=T) == []


@pytest.mark.parametrize(
    "bad",
    [{"name": "x"}, {"id": "1"}, {"id": None}, {"id": True}, {"id": 1.0}, "not-an-object"],
)
def test_entity_without_integer_id_raises_naming_the_type(bad: Any) -> None:
    """An entity without an integer id raises MirrorError naming the entity type."""
    with pytest.raises(MirrorError, match="fillPair"):
        Mirror().diff_event("fillPair", "Created", [bad], received_at=T)


def test_bad_entity_in_a_list_leaves_state_untouched() -> None:
    """A MirrorError on one entity of a list applies none of the others."""
    m = Mirror()
    with pytest.raises(MirrorError):
        m.diff_event("order", "Created", [order(1), {"id": None}], received_at=T)
    assert len(m) == 0 and m.pending == 0 and m.counts() == {}


def test_unknown_event_type_raises() -> None:
    """An eventType other than Created/Updated/Deleted raises MirrorError."""
    m = Mirror()
    with pytest.raises(MirrorError, match="Replaced"):
        m.diff_event("order", "Replaced", [order(1)], received_at=T)
    assert len(m) == 0


def test_mirror_error_is_a_value_error() -> None:
    """Callers catching ValueError also catch MirrorError."""
    assert issubclass(MirrorError, ValueError)


def test_live_events_before_any_snapshot_do_not_mark_it_seen() -> None:
    """Live events leave snapshot_seen false, so the first snapshot still has origin snapshot."""
    m = Mirror()
    m.diff_event("order", "Created", [order(1)], received_at=T)
    m.commit()
    assert not m.snapshot_seen
    changes = m.diff_snapshot(snap(("order", order(1)), ("order", order(2))), types=None, received_at=T)
    assert summary(changes) == [("snapshot", "order", "Created", 2)]


# -- system events -----------------------------------------------------------------


def test_system_event_is_recorded_and_never_touches_state() -> None:
    """system() returns an origin-system Change and leaves the state as it was."""
    m = Mirror([("order", 1, order(1))])
    payload = {"id": 1, "text": "auto-liquidation"}
    change = m.system("alertSignal", payload, received_at=T)
    assert change == Change("system", "alertSignal", "Event", None, payload, T)
    assert state(m) == {("order", 1): order(1)} and m.pending == 0


# -- pending overlay, commit, rollback -----------------------------------------------


def test_uncommitted_changes_are_visible_to_later_diffs() -> None:
    """Created then Deleted in one uncommitted batch leaves the id absent and emits both."""
    m = Mirror()
    a = m.diff_event("order", "Created", [order(1)], received_at=T)
    b = m.diff_event("order", "Deleted", [{"id": 1}], received_at=T)
    assert summary(a + b) == [("live", "order", "Created", 1), ("live", "order", "Deleted", 1)]
    assert m.get(("order", 1)) is None and ("order", 1) not in m and len(m) == 0
    m.commit()
    assert committed(m) == {}


def test_snapshot_sees_uncommitted_live_changes() -> None:
    """A snapshot is diffed against committed plus pending state."""
    m = Mirror([("order", 1, order(1))])
    m.diff_event("order", "Updated", [order(1, "Filled")], received_at=T)
    m.diff_event("order", "Created", [order(2)], received_at=T)
    changes = m.diff_snapshot(snap(("order", order(1, "Filled"))), types=None, received_at=T)
    assert summary(changes) == [("resync", "order", "Deleted", 2)]
    assert changes[0].entity == order(2)


def test_committed_view_excludes_pending_until_commit() -> None:
    """committed_items() shows the sink's state; commit() folds pending into it."""
    m = Mirror([("order", 1, order(1)), ("order", 2, order(2))])
    m.diff_event("order", "Updated", [order(1, "Filled")], received_at=T)
    m.diff_event("order", "Deleted", [{"id": 2}], received_at=T)
    m.diff_event("position", "Created", [pos(3)], received_at=T)
    assert committed(m) == {("order", 1): order(1), ("order", 2): order(2)}
    assert state(m) == {("order", 1): order(1, "Filled"), ("position", 3): pos(3)}
    m.commit()
    assert committed(m) == state(m) == {("order", 1): order(1, "Filled"), ("position", 3): pos(3)}
    assert m.pending == 0


def test_rollback_restores_the_committed_state_exactly() -> None:
    """After rollback, items, len, counts and snapshot_seen equal the committed ones."""
    m = Mirror()
    m.diff_event("order", "Created", [order(1)], received_at=T)
    m.commit()
    before = (state(m), len(m), m.counts(), m.snapshot_seen)
    m.diff_event("order", "Updated", [order(1, "Filled")], received_at=T)
    m.diff_event("order", "Created", [order(2)], received_at=T)
    m.diff_snapshot(snap(("position", pos(3))), types=None, received_at=T)
    assert m.snapshot_seen
    m.rollback()
    assert (state(m), len(m), m.counts(), m.snapshot_seen) == before
    assert committed(m) == state(m) and m.pending == 0


def test_rolled_back_first_snapshot_is_reported_as_snapshot_again() -> None:
    """A first snapshot whose batch was rolled back is emitted again with origin snapshot."""
    m = Mirror()
    s = snap(("order", order(1)))
    m.diff_snapshot(s, types=None, received_at=T)
    m.rollback()
    assert summary(m.diff_snapshot(s, types=None, received_at=T)) == [("snapshot", "order", "Created", 1)]
    m.commit()
    assert m.snapshot_seen


def test_counts_and_len_follow_pending_changes() -> None:
    """counts() and len() reflect committed plus pending entities per type."""
    m = Mirror([("order", 1, order(1)), ("position", 2, pos(2))])
    assert m.counts() == {"order": 1, "position": 1}
    m.diff_event("order", "Created", [order(3), order(1)], received_at=T)
    m.diff_event("position", "Deleted", [{"id": 2}], received_at=T)
    assert m.counts() == {"order": 2} and len(m) == 2
    m.commit()
    assert m.counts() == {"order": 2} and len(m) == 2


def test_preload_rejects_non_integer_ids() -> None:
    """Preloading an entity whose id is not an integer raises MirrorError."""
    with pytest.raises(MirrorError, match="order"):
        Mirror([("order", True, {"id": True})])


def test_entities_are_held_as_their_json_text() -> None:
    """The mirror keeps an entity's JSON text, hands it to the change as ``data`` and parses a new dict per get()."""
    e = order(1)
    m = Mirror()
    [change] = m.diff_event("order", "Created", [e], received_at=T)
    assert change.entity is e and change.data == orjson.dumps(e).decode()
    held = m.get(("order", 1))
    assert held == e and held is not e
    held["ordStatus"] = "Filled"  # a caller's copy: the mirror is not changed through it
    assert m.get(("order", 1)) == e


def test_a_reordered_or_equal_valued_entity_is_no_change() -> None:
    """Texts that differ but parse equal (keys reordered, 1 vs 1.0) change nothing, as dict equality said."""
    m = Mirror([("order", 1, {"id": 1, "accountId": 7, "qty": 1})])
    assert m.diff_event("order", "Updated", [{"qty": 1.0, "accountId": 7, "id": 1}], received_at=T) == []
    assert m.diff_snapshot({("order", 1): {"accountId": 7, "id": 1, "qty": 1}}, types=None, received_at=T) == []
    [change] = m.diff_event("order", "Updated", [{"id": 1, "accountId": 7, "qty": 2}], received_at=T)
    assert change.event_type == "Updated" and m.get(("order", 1)) == {"id": 1, "accountId": 7, "qty": 2}


def test_an_entity_without_json_text_is_kept_as_the_object() -> None:
    """An entity orjson cannot serialise (never one from the codec) is held as is and still compared by value."""
    odd = {"id": 1, "big": 2**70}
    m = Mirror()
    [change] = m.diff_event("order", "Created", [odd], received_at=T)
    assert change.data is None and m.get(("order", 1)) is odd
    assert m.diff_event("order", "Updated", [{"id": 1, "big": 2**70}], received_at=T) == []
    [gone] = m.diff_snapshot({}, types=None, received_at=T)
    assert gone.event_type == "Deleted" and gone.entity is odd and gone.data is None


def test_vanished_lists_what_a_snapshot_would_delete_sorted_and_deletes_nothing() -> None:
    """vanished() names the current keys a snapshot lacks, pending ones included, and changes no state."""
    m = Mirror([("order", 3, order(3)), ("order", 1, order(1)), ("position", 2, pos(2))])
    m.diff_event("order", "Created", [order(9)], received_at=T)
    assert m.vanished(snap(("order", order(1)))) == [("order", 3), ("order", 9), ("position", 2)]
    assert len(m) == 4


def test_diff_snapshot_with_deleting_deletes_only_those_keys() -> None:
    """With ``deleting``, other vanished keys stay (no change); keys the snapshot has are never deleted."""
    m = Mirror([("order", 1, order(1)), ("order", 2, order(2)), ("order", 3, order(3))])
    changes = m.diff_snapshot(snap(("order", order(1, "Filled"))), types=None, received_at=T,
                              deleting=[("order", 1), ("order", 2)])
    assert summary(changes) == [("resync", "order", "Deleted", 2), ("resync", "order", "Updated", 1)]
    assert sorted(state(m)) == [("order", 1), ("order", 3)]


def test_delete_keys_deletes_the_current_ones_with_the_given_origin() -> None:
    """delete_keys() emits Deleted (with the stored entity) for present keys only, under the origin it is given."""
    m = Mirror([("order", 1, order(1)), ("order", 2, order(2))])
    changes = m.delete_keys([("order", 1), ("order", 5)], origin="resync", received_at=T)
    assert summary(changes) == [("resync", "order", "Deleted", 1)] and changes[0].entity == order(1)
    assert sorted(state(m)) == [("order", 2)]
    m.rollback()
    assert sorted(state(m)) == [("order", 1), ("order", 2)]
