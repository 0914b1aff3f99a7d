"""The mirror as it was before it held JSON text: parsed dicts, stored as given (the reference for
tests/fuzz/test_mirror_reference.py; a copy of daemon/shardsync/mirror.py at 8f6428a, unchanged below)."""

from __future__ import annotations

from collections.abc import Collection, ItemsView, Iterable, Iterator, Mapping, Sequence
from typing import Any

from shardsync.change import ACCOUNT_KEYED_TYPES, ACCOUNT_VIA, EVENT_TYPES, Change, Entity, Key, Origin
from shardsync.quarantine import Refusal, fits

__all__ = ["Entity", "Key", "Mirror", "MirrorError", "key_of"]


class MirrorError(ValueError):
    """An event or entity the mirror cannot apply; state is left untouched."""


def key_of(entity_type: str, entity: object) -> Key:
    """The mirror key of ``entity``; raises MirrorError without an integer ``id``."""
    if not isinstance(entity, dict):
        raise MirrorError(f"{entity_type}: entity is not an object")
    ident = entity.get("id")
    # bool is an int subclass and True == 1 would alias the key of id 1.
    if not isinstance(ident, int) or isinstance(ident, bool):
        raise MirrorError(f"{entity_type}: entity has no integer id")
    if not fits(ident):
        raise MirrorError(f"{entity_type}: id outside signed 64-bit")
    return (entity_type, ident)


#: "Not in the pending overlay" (None there means deleted).
_ABSENT: Any = object()


def _first(item: tuple[Key, Entity]) -> Key:
    return item[0]


class Mirror:
    """Committed state plus a pending overlay, keyed by ``(entity_type, id)``.

    Rules the brief left open, decided here:

    * ``diff_snapshot`` emits every ``Deleted`` first, in ``(entity_type, id)``
      order, then ``Created``/``Updated`` in the snapshot's iteration order
      (the server's order, and O(n) with no sort of the whole snapshot).
    * A live ``Created`` for a known id or ``Updated`` for an unknown id is an
      upsert and is emitted with the event type as received; sinks must treat
      both as upserts.
    * The first snapshot has origin ``snapshot``; later ones, and any snapshot
      of a mirror preloaded with entities (a restarted worker), ``resync``.
    * Every change carries its ``account_id``: the entity's own (``accountId``,
      or the id of an account-keyed type), else its parent's through
      :data:`~shardsync.change.ACCOUNT_VIA` (a fill through its order) as the
      mirror holds it at that moment, deleted parents of the same snapshot
      included.  A parent the mirror does not know gives None and counts in
      :attr:`unattributed`.
    """

    __slots__ = ("_committed", "_committed_counts", "_committed_size", "_committed_synced", "_counts", "_pending",
                 "_size", "_synced", "unattributed")

    def __init__(self, entities: Iterable[tuple[str, int, Entity]] = (), *, synced: bool | None = None) -> None:
        """Preload committed state from the sink.

        ``synced`` says whether the sink already went through a first
        snapshot; by default it is true when any entity was preloaded. A
        worker whose sink holds history but no entities can pass True so its
        first snapshot is logged as ``resync``.
        """
        committed: dict[Key, Entity] = {}
        for entity_type, ident, entity in entities:
            if not isinstance(ident, int) or isinstance(ident, bool):
                raise MirrorError(f"{entity_type}: preloaded entity has no integer id")
            committed[(entity_type, ident)] = entity
        counts: dict[str, int] = {}
        for entity_type, _ in committed:
            counts[entity_type] = counts.get(entity_type, 0) + 1
        self._committed = committed
        # None marks a committed key deleted in the pending batch.
        self._pending: dict[Key, Entity | None] = {}
        self._size = self._committed_size = len(committed)
        self._counts = counts
        self._committed_counts = dict(counts)
        self._synced = self._committed_synced = bool(committed) if synced is None else synced
        #: Changes of a type attributed through a parent (ACCOUNT_VIA) whose parent was unknown.
        self.unattributed = 0

    # -- reading (committed + pending) ---------------------------------------

    def get(self, key: Key) -> Entity | None:
        """The current entity for ``key``, pending changes included."""
        pending = self._pending
        if key in pending:
            return pending[key]
        return self._committed.get(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and self.get(key) is not None

    def __len__(self) -> int:
        return self._size

    def items(self) -> Iterator[tuple[Key, Entity]]:
        """Current entities, pending changes included; do not diff while iterating."""
        pending = self._pending
        for key, entity in self._committed.items():
            if key not in pending:
                yield key, entity
        for key, maybe in pending.items():
            if maybe is not None:
                yield key, maybe

    def committed_items(self) -> ItemsView[Key, Entity]:
        """Entities as the sink holds them (pending changes excluded)."""
        return self._committed.items()

    def counts(self) -> dict[str, int]:
        """Current entities per type, pending changes included."""
        return dict(self._counts)

    @property
    def snapshot_seen(self) -> bool:
        """Whether a snapshot was diffed (or the sink had one) before."""
        return self._synced

    @property
    def pending(self) -> int:
        """Number of keys changed since the last commit or rollback."""
        return len(self._pending)

    # -- diffing --------------------------------------------------------------

    def vanished(self, snapshot: Mapping[Key, Entity], *, types: Collection[str] | None = None) -> list[Key]:
        """The current keys :meth:`diff_snapshot` would delete for ``snapshot``, in ``(entity_type, id)`` order."""
        return [key for key, _ in self._vanished(snapshot, self._scope(types))]

    def diff_snapshot(self, snapshot: Mapping[Key, Entity], *, types: Collection[str] | None, received_at: str,
                      deleting: Sequence[Key] | None = None) -> list[Change]:
        """Reconcile with a complete snapshot and return the changes it implies.

        The snapshot is the whole truth for the shard: any current key absent
        from it is deleted, whatever its type. ``types`` is the configured
        scope: when given, snapshot entities of other types are ignored (the
        server sent what was not asked for) and current entities of other
        types are deleted (left over from an older configuration). ``None``
        takes the snapshot as is. Keys are built from entities whose ids were
        checked, by the codec (``syncmessage.snapshot_entities``) or :func:`key_of`.
        ``deleting`` narrows the deletions to those keys (sorted; the other
        vanished keys stay, for the caller to delete later with :meth:`delete_keys`, or never).
        """
        scope = self._scope(types)
        origin: Origin = "resync" if self._synced else "snapshot"
        if deleting is None:
            vanished = self._vanished(snapshot, scope)
        else:
            vanished = [(key, entity) for key in deleting
                        if key not in snapshot and (entity := self.get(key)) is not None]
        changes = self._delete(vanished, origin, received_at)

        committed, pending, account = self._committed, self._pending, self._attribute
        orphans: list[Change] = []
        for key, entity in snapshot.items():
            if scope is not None and key[0] not in scope:
                continue
            current = pending[key] if key in pending else committed.get(key)
            try:
                if current == entity:
                    continue
            except RecursionError:  # nested too deep to compare: stored again
                pass
            self._put(key, entity, current is not None)
            event_type = "Created" if current is None else "Updated"
            change = Change(origin, key[0], event_type, key[1], entity, received_at, account(key[0], entity, False))
            if change.account_id is None and key[0] in ACCOUNT_VIA:
                orphans.append(change)
            changes.append(change)
        # A second look once the whole snapshot is in: a parent may come later in it.
        for change in orphans:
            change.account_id = account(change.entity_type, change.entity)
        self._synced = True
        return changes

    def delete_keys(self, keys: Sequence[Key], *, origin: Origin, received_at: str) -> list[Change]:
        """Delete those of ``keys`` (sorted) that are current, as changes of ``origin``; absent keys are skipped."""
        vanished = [(key, entity) for key in keys if (entity := self.get(key)) is not None]
        return self._delete(vanished, origin, received_at)

    def _scope(self, types: Collection[str] | None) -> frozenset[str] | None:
        if isinstance(types, str):  # a Collection[str] of characters: always a bug
            raise MirrorError(f"types must be a collection of names, not {types!r}")
        return None if types is None else frozenset(types)

    def _vanished(self, snapshot: Mapping[Key, Entity], scope: frozenset[str] | None) -> list[tuple[Key, Entity]]:
        committed, pending = self._committed, self._pending
        # Written out per case rather than through a helper: with up to 1M
        # entities, per-key function calls dominate the cost.
        if scope is None:
            vanished = [(k, e) for k, e in committed.items() if k not in snapshot and k not in pending]
            vanished += [(k, e) for k, e in pending.items() if e is not None and k not in snapshot]
        else:
            vanished = [(k, e) for k, e in committed.items()
                        if (k[0] not in scope or k not in snapshot) and k not in pending]
            vanished += [(k, e) for k, e in pending.items()
                         if e is not None and (k[0] not in scope or k not in snapshot)]
        vanished.sort(key=_first)
        return vanished

    def _delete(self, vanished: list[tuple[Key, Entity]], origin: Origin, received_at: str) -> list[Change]:
        """Remove the current ``vanished`` entities; their Deleted changes, attributed before the removals."""
        # Attributed first: a fill and its order may vanish together.
        account = self._attribute
        changes = [Change(origin, k[0], "Deleted", k[1], e, received_at, account(k[0], e)) for k, e in vanished]
        committed, pending, counts = self._committed, self._pending, self._counts
        for key, _ in vanished:
            if key in committed:
                pending[key] = None
            else:
                del pending[key]
            counts[key[0]] -= 1
        for entity_type in {key[0] for key, _ in vanished}:
            if not counts[entity_type]:
                del counts[entity_type]
        self._size -= len(vanished)
        return changes

    def diff_event(
        self, entity_type: str, event_type: str, entities: Sequence[Entity], *, received_at: str
    ) -> list[Change]:
        """Apply one live ``props`` event and return the changes it made.

        Re-delivery of an entity the mirror already holds, and ``Deleted`` of
        an unknown id, change nothing and emit nothing (Tradovate may
        re-deliver; clients dedupe). Every entity's id is checked before any
        is applied, so a MirrorError leaves the state untouched. Entities
        decoded by the codec are checked already: see :meth:`diff_props`.
        """
        for entity in entities:
            key_of(entity_type, entity)
        return self.diff_props(entity_type, event_type, entities, received_at=received_at)

    def diff_props(
        self, entity_type: str, event_type: str, entities: Sequence[Entity], *, received_at: str
    ) -> list[Change]:
        """:meth:`diff_event` for entities whose ids are checked already.

        The codec owns that check (``protocol.PropsEvent``: every entity is an
        object with an integer ``id``), so the worker's hot path does not
        repeat it; any other caller uses :meth:`diff_event`.
        """
        if event_type not in EVENT_TYPES:
            raise MirrorError(f"{entity_type}: unknown eventType {event_type!r}")
        if len(entities) == 1:
            # The live hot path, written out (see _decode_messages in protocol).
            entity = entities[0]
            ident = entity["id"]
            key = (entity_type, ident)
            pending = self._pending
            current = pending[key] if key in pending else self._committed.get(key)
            if event_type == "Deleted":
                if current is None:
                    return []
                self._remove(key)
                # A Deleted event may carry only the id: the stored entity knows its account.
                owner = current
            else:
                try:
                    if current == entity:
                        return []
                except RecursionError:  # nested too deep to compare: stored again
                    pass
                self._put(key, entity, current is not None)
                owner = entity
            account = ident if entity_type in ACCOUNT_KEYED_TYPES else owner.get("accountId")
            if type(account) is not int:
                account = self._through_parent(entity_type, owner)
            return [Change("live", entity_type, event_type, ident, entity, received_at, account)]
        changes: list[Change] = []
        deleting = event_type == "Deleted"
        for entity in entities:
            key = (entity_type, entity["id"])
            current = self.get(key)
            if deleting:
                if current is None:
                    continue
                self._remove(key)
                owner = current
            else:
                try:
                    if current == entity:
                        continue
                except RecursionError:  # nested too deep to compare: stored again
                    pass
                self._put(key, entity, current is not None)
                owner = entity
            account = self._attribute(entity_type, owner)
            changes.append(Change("live", entity_type, event_type, key[1], entity, received_at, account))
        return changes

    def system(self, name: str, payload: Any, *, received_at: str) -> Change:
        """A system or unknown event as a change record; the state is untouched."""
        account = payload.get("accountId") if isinstance(payload, dict) else None
        return Change("system", name, "Event", None, payload, received_at, account if fits(account) else None)

    def rejected(self, refusal: Refusal, *, received_at: str) -> Change:
        """An entity the codec refused, as a change record (origin ``rejected``); the state is untouched."""
        account = refusal.account_id()
        if account is None and refusal.entity_type in ACCOUNT_VIA:  # a child: through its parent, uncounted
            account = self._through_parent(refusal.entity_type, refusal.owner, False)
        return Change("rejected", refusal.entity_type, refusal.event_type, refusal.id, refusal.record(), received_at,
                      account if fits(account) else None)

    # -- batch boundaries -----------------------------------------------------

    def commit(self) -> None:
        """Make the pending changes committed: the sink committed their batch."""
        committed = self._committed
        for key, maybe in self._pending.items():
            if maybe is None:
                del committed[key]
            else:
                committed[key] = maybe
        self._pending.clear()
        self._committed_size = self._size
        self._committed_counts = dict(self._counts)
        self._committed_synced = self._synced

    def rollback(self) -> None:
        """Drop the pending changes: the sink failed, the state is the committed one."""
        self._pending.clear()
        self._size = self._committed_size
        self._counts = dict(self._committed_counts)
        self._synced = self._committed_synced

    # -- internals ------------------------------------------------------------

    def _attribute(self, entity_type: str, entity: Entity, count: bool = True) -> int | None:
        """The account of ``entity``: its own, else its parent chain's as the mirror holds it now."""
        account = entity.get("id") if entity_type in ACCOUNT_KEYED_TYPES else entity.get("accountId")
        if type(account) is int:
            return account
        return self._through_parent(entity_type, entity, count)

    def _through_parent(self, entity_type: str, entity: Entity, count: bool = True, depth: int = 0) -> int | None:
        """The account of an entity without one of its own, from its parent chain (ACCOUNT_VIA)."""
        via = ACCOUNT_VIA.get(entity_type)
        if via is None:
            return None  # a type that belongs to no account (user, contract...)
        parent_type, parent_id = via[1], entity.get(via[0])
        parent = None
        if type(parent_id) is int:
            key = (parent_type, parent_id)
            parent = self._pending.get(key, _ABSENT)
            if parent is _ABSENT:
                parent = self._committed.get(key)
        if parent is not None:
            account = parent.get("id") if parent_type in ACCOUNT_KEYED_TYPES else parent.get("accountId")
            if type(account) is int:
                return account
            if depth < 3:  # the longest chain is commandReport -> command -> order
                return self._through_parent(parent_type, parent, count, depth + 1)
        if count:
            self.unattributed += 1
        return None

    def _put(self, key: Key, entity: Entity, existed: bool) -> None:
        self._pending[key] = entity
        if not existed:
            self._size += 1
            counts = self._counts
            counts[key[0]] = counts.get(key[0], 0) + 1

    def _remove(self, key: Key) -> None:
        """Delete a key known to be present."""
        if key in self._committed:
            self._pending[key] = None
        else:
            # Never committed, so no tombstone is needed: dropping the overlay
            # entry restores "absent" (both changes were still emitted).
            del self._pending[key]
        self._size -= 1
        counts = self._counts
        left = counts[key[0]] - 1
        if left:
            counts[key[0]] = left
        else:
            del counts[key[0]]
