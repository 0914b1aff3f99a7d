"""The mirror that holds JSON text reconciles exactly like the dict-based mirror it replaced (tests/dictmirror.py)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from dictmirror import Mirror as DictMirror
from shardsync.change import Change, Key
from shardsync.mirror import Mirror
from shardsync.quarantine import Refusal

T = "2026-12-01T00:00:00.000Z"
# Parents and children (fill -> order, commandReport -> command -> order), an account-keyed type, an unowned one.
TYPES = ("order", "fill", "command", "commandReport", "account", "user")
LINKS = {"fill": "orderId", "command": "orderId", "commandReport": "commandId"}
IDS = st.integers(1, 4)

# Values that compare equal across JSON texts that differ (1, 1.0, True), nesting, and plain noise.
scalar_st = st.one_of(st.sampled_from([0, 1, 1.0, True, False, None, "a", "b", 2.5]), st.integers(-3, 3))
value_st = st.recursive(scalar_st, lambda inner: st.lists(inner, max_size=2) | st.dictionaries(
    st.sampled_from(["x", "y"]), inner, max_size=2), max_leaves=4)


@st.composite
def entity_st(draw: st.DrawFn, entity_type: str, ident: int) -> dict[str, Any]:
    """An entity with its id first or last, maybe an account, maybe a parent link, a value, any key order."""
    members: list[tuple[str, Any]] = [("v", draw(value_st))]
    if draw(st.booleans()):
        members.append(("accountId", draw(st.one_of(st.integers(1, 3), st.sampled_from([None, True, "7"])))))
    link = LINKS.get(entity_type)
    if link is not None and draw(st.booleans()):
        members.append((link, draw(st.one_of(IDS, st.just("1")))))
    members = draw(st.permutations(members))
    at = draw(st.integers(0, len(members)))
    return dict([*members[:at], ("id", ident), *members[at:]])


@st.composite
def keyed_st(draw: st.DrawFn) -> tuple[Key, dict[str, Any]]:
    entity_type, ident = draw(st.sampled_from(TYPES)), draw(IDS)
    return (entity_type, ident), draw(entity_st(entity_type, ident))


snapshot_st = st.lists(keyed_st(), max_size=8).map(dict)
keys_st = st.lists(st.tuples(st.sampled_from(TYPES), IDS), max_size=4).map(lambda keys: sorted(set(keys)))
op_st = st.one_of(
    # A snapshot as the assembler hands it over (each entity's JSON text) or as dicts (the outage's rebuild).
    st.tuples(st.just("snapshot"), snapshot_st, st.sampled_from([None, ("order", "fill", "account")]),
              st.one_of(st.none(), keys_st), st.booleans()),
    st.tuples(st.just("event"), st.sampled_from(["Created", "Updated", "Deleted"]), st.lists(keyed_st(), min_size=1,
                                                                                            max_size=3)),
    st.tuples(st.just("delete"), keys_st),
    st.tuples(st.just("rejected"), keyed_st()),
    # An entity the mirror holds, sent again equal by value in another text (as an event or in a snapshot).
    st.tuples(st.just("echo"), st.integers(0, 20), st.sampled_from(["Created", "Updated", "snapshot"])),
    st.tuples(st.just("commit")),
    st.tuples(st.just("rollback")),
)


def variant(value: Any) -> Any:
    """``value`` equal by value in another JSON text: objects' members reversed, integers as floats."""
    if type(value) is dict:
        return {k: v if k == "id" else variant(v) for k, v in reversed(value.items())}
    if type(value) is list:
        return [variant(v) for v in value]
    return float(value) if type(value) is int else value


def same_changes(ours: list[Change], reference: list[Any]) -> None:
    """Field by field equal; ``data``, which only the new mirror fills, is the entity's own JSON text."""
    assert [(c.origin, c.entity_type, c.event_type, c.id, c.entity, c.received_at, c.account_id) for c in ours] == [
        (c.origin, c.entity_type, c.event_type, c.id, c.entity, c.received_at, c.account_id) for c in reference]
    for change in ours:
        assert change.data is None or orjson.loads(change.data) == change.entity


def same_state(ours: Mirror, reference: DictMirror) -> None:
    assert dict(ours.items()) == dict(reference.items())
    assert {key: orjson.loads(slot) for key, slot in ours.held()} == dict(reference.items())
    assert dict(ours.committed_items()) == dict(reference.committed_items())
    assert (len(ours), ours.counts(), ours.pending, ours.snapshot_seen, ours.unattributed) == (
        len(reference), reference.counts(), reference.pending, reference.snapshot_seen, reference.unattributed)
    for entity_type in TYPES:
        for ident in range(1, 5):
            key = (entity_type, ident)
            assert ours.get(key) == reference.get(key) and (key in ours) == (key in reference)


@settings(max_examples=400, deadline=None)
@given(preload=snapshot_st, ops=st.lists(op_st, max_size=12))
def test_the_text_mirror_reconciles_like_the_dict_mirror(preload: dict[Key, dict[str, Any]],
                                                         ops: list[tuple[Any, ...]]) -> None:
    """Any preload and any sequence of snapshots, events, deletions, refusals, commits and rollbacks give both
    mirrors the same changes (accounts included) and the same state after every step."""
    rows = [(key[0], key[1], entity) for key, entity in preload.items()]
    ours, reference = Mirror(rows), DictMirror([(t, i, dict(e)) for t, i, e in rows])
    for op in ops:
        kind = op[0]
        if kind == "snapshot":
            _, snapshot, types, deleting, as_text = op
            given = {key: orjson.dumps(entity).decode() for key, entity in snapshot.items()} if as_text else snapshot
            assert ours.vanished(given, types=types) == reference.vanished(snapshot, types=types)
            same_changes(ours.diff_snapshot(given, types=types, received_at=T, deleting=deleting),
                         reference.diff_snapshot(snapshot, types=types, received_at=T, deleting=deleting))
        elif kind == "event":
            _, event_type, keyed = op
            for entity_type in {key[0] for key, _ in keyed}:
                entities = [entity for key, entity in keyed if key[0] == entity_type]
                same_changes(ours.diff_event(entity_type, event_type, entities, received_at=T),
                             reference.diff_event(entity_type, event_type, entities, received_at=T))
        elif kind == "delete":
            same_changes(ours.delete_keys(op[1], origin="resync", received_at=T),
                         reference.delete_keys(op[1], origin="resync", received_at=T))
        elif kind == "rejected":
            (entity_type, _), entity = op[1]
            refusal = Refusal(entity_type, "Updated", "test", entity, None, "")
            same_changes([ours.rejected(refusal, received_at=T)], [reference.rejected(refusal, received_at=T)])
        elif kind == "echo":
            current = sorted(reference.items())
            if not current:
                continue
            key, entity = current[op[1] % len(current)]
            again = variant(entity)
            assert again == entity and orjson.dumps(again) != orjson.dumps(entity)
            if op[2] == "snapshot":  # as the assembler hands it over: texts
                snapshot = {k: orjson.dumps(e).decode() for k, e in current} | {key: orjson.dumps(again).decode()}
                same_changes(ours.diff_snapshot(snapshot, types=None, received_at=T),
                             reference.diff_snapshot(dict(current) | {key: again}, types=None, received_at=T))
            else:
                same_changes(ours.diff_event(key[0], op[2], [again], received_at=T),
                             reference.diff_event(key[0], op[2], [again], received_at=T))
        elif kind == "commit":
            ours.commit()
            reference.commit()
        else:
            ours.rollback()
            reference.rollback()
        same_state(ours, reference)
