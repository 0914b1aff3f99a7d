"""Property tests for the mirror: any history of faults heals with one resync, and the change log suffices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shardsync.change import Change
from shardsync.mirror import Key, Mirror

T = "t"
IN_SCOPE = ("order", "position")
# "user" plays a type the server sends although the configuration did not ask for it.
TYPES = (*IN_SCOPE, "user")

Entity = dict[str, Any]
State = dict[Key, Entity]

keys_st = st.tuples(st.sampled_from(TYPES), st.integers(1, 5))
# Few distinct values so that identical re-deliveries and no-op updates are common.
states_st = st.dictionaries(keys_st, st.integers(0, 2)).map(lambda d: {k: {"id": k[1], "v": v} for k, v in d.items()})
scope_st = st.sampled_from([None, IN_SCOPE])

action_st = st.one_of(
    st.tuples(
        st.just("change"),
        st.sampled_from(["Created", "Updated", "Deleted"]),
        st.sampled_from(TYPES),
        st.lists(st.integers(1, 5), min_size=1, max_size=3),
        st.integers(0, 2),
        st.booleans(),  # Deleted entities: id only, or the full entity
    ),
    st.tuples(st.just("redeliver"), st.integers(0, 1000)),
    st.tuples(st.just("disconnect")),
    st.tuples(st.just("resync")),
    st.tuples(st.just("commit")),
    st.tuples(st.just("rollback")),
)
actions_st = st.lists(action_st, max_size=40)


def replay(sink: State, changes: list[Change]) -> None:
    """An independent sink: upsert on Created/Updated, delete on Deleted."""
    for c in changes:
        assert c.id is not None
        key = (c.entity_type, c.id)
        if c.event_type == "Deleted":
            sink.pop(key, None)
        else:
            sink[key] = c.entity


def in_scope(state: State, scope: tuple[str, ...] | None) -> State:
    return {k: v for k, v in state.items() if scope is None or k[0] in scope}


def check_invariants(m: Mirror) -> None:
    items = dict(m.items())
    assert len(m) == len(items)
    expected_counts: dict[str, int] = {}
    for entity_type, _ in items:
        expected_counts[entity_type] = expected_counts.get(entity_type, 0) + 1
    assert m.counts() == expected_counts
    for key, entity in items.items():
        assert m.get(key) == entity


@dataclass
class World:
    """The server's truth, the mirror, and a sink fed only with committed batches."""

    truth: State
    mirror: Mirror
    sink: State
    scope: tuple[str, ...] | None
    connected: bool = True
    delivered: list[tuple[str, str, list[Entity]]] = field(default_factory=list)
    batch: list[Change] = field(default_factory=list)

    def resync(self) -> None:
        self.batch += self.mirror.diff_snapshot(dict(self.truth), types=self.scope, received_at=T)
        self.connected = True

    def commit(self) -> None:
        self.mirror.commit()
        replay(self.sink, self.batch)
        self.batch.clear()
        assert self.sink == dict(self.mirror.committed_items()) == dict(self.mirror.items())

    def rollback(self) -> None:
        self.mirror.rollback()
        self.batch.clear()
        assert self.sink == dict(self.mirror.committed_items()) == dict(self.mirror.items())

    def deliver(self, entity_type: str, event_type: str, entities: list[Entity]) -> None:
        self.delivered.append((entity_type, event_type, entities))
        self.batch += self.mirror.diff_event(entity_type, event_type, entities, received_at=T)

    def run(self, action: tuple[Any, ...]) -> None:
        kind = action[0]
        if kind == "change":
            _, event_type, entity_type, ids, version, id_only = action
            entities: list[Entity] = []
            for ident in ids:
                key = (entity_type, ident)
                if event_type == "Deleted":
                    gone = self.truth.pop(key, {"id": ident})
                    entities.append({"id": ident} if id_only else gone)
                else:
                    entity = {"id": ident, "v": version}
                    self.truth[key] = entity
                    entities.append(entity)
            if self.connected:
                self.deliver(entity_type, event_type, entities)
        elif kind == "redeliver":
            if self.connected and self.delivered:
                self.deliver(*self.delivered[action[1] % len(self.delivered)])
        elif kind == "disconnect":
            self.connected = False
        elif kind == "resync":
            self.resync()
        elif kind == "commit":
            self.commit()
        else:
            self.rollback()
        check_invariants(self.mirror)


def play(truth: State, preload: State, scope: tuple[str, ...] | None, actions: list[tuple[Any, ...]]) -> World:
    mirror = Mirror((t, i, e) for (t, i), e in preload.items())
    world = World(truth=dict(truth), mirror=mirror, sink=dict(preload), scope=scope)
    for action in actions:
        world.run(action)
    world.resync()
    world.commit()
    return world


@settings(max_examples=400, deadline=None)
@given(states_st, states_st, scope_st, actions_st)
def test_any_history_converges_to_the_truth_after_one_resync(
    truth: State, preload: State, scope: tuple[str, ...] | None, actions: list[tuple[Any, ...]]
) -> None:
    """After any mix of live, missed and re-delivered changes and faults, one resync makes mirror == server."""
    world = play(truth, preload, scope, actions)
    assert dict(world.mirror.items()) == in_scope(world.truth, scope)
    assert world.mirror.snapshot_seen


@settings(max_examples=400, deadline=None)
@given(states_st, states_st, scope_st, actions_st)
def test_replaying_committed_changes_reproduces_the_mirror(
    truth: State, preload: State, scope: tuple[str, ...] | None, actions: list[tuple[Any, ...]]
) -> None:
    """A sink fed only the committed changes (upsert/delete) ends equal to the mirror and the server."""
    world = play(truth, preload, scope, actions)
    assert world.sink == dict(world.mirror.committed_items()) == in_scope(world.truth, scope)


@settings(max_examples=300, deadline=None)
@given(states_st, states_st, scope_st, actions_st)
def test_replaying_a_pending_batch_onto_the_committed_state_reproduces_the_mirror(
    truth: State, preload: State, scope: tuple[str, ...] | None, actions: list[tuple[Any, ...]]
) -> None:
    """Before any commit, committed state plus the batch's changes equals the mirror's current view."""
    world = World(
        truth=dict(truth),
        mirror=Mirror((t, i, e) for (t, i), e in preload.items()),
        sink=dict(preload),
        scope=scope,
    )
    for action in actions:
        if action[0] in ("commit", "rollback"):
            continue
        world.run(action)
    replayed = dict(world.mirror.committed_items())
    replay(replayed, world.batch)
    assert replayed == dict(world.mirror.items())


@settings(max_examples=300, deadline=None)
@given(states_st, states_st, states_st, scope_st, st.booleans())
def test_same_snapshot_twice_emits_nothing_the_second_time(
    preload: State, live: State, snapshot: State, scope: tuple[str, ...] | None, commit_between: bool
) -> None:
    """Diffing a snapshot twice emits nothing the second time, with or without a commit in between."""
    m = Mirror((t, i, e) for (t, i), e in preload.items())
    for (entity_type, _), entity in live.items():
        m.diff_event(entity_type, "Updated", [entity], received_at=T)
    m.diff_snapshot(snapshot, types=scope, received_at=T)
    assert dict(m.items()) == in_scope(snapshot, scope)
    if commit_between:
        m.commit()
    assert m.diff_snapshot(snapshot, types=scope, received_at=T) == []
