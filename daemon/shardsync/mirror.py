"""A shard's in-memory state and its reconciliation with what the server says.

Pure: no I/O, no clock, no logging. The caller passes ``received_at`` and
writes the returned :class:`~shardsync.change.Change` records to the sink.

State has two layers. *Committed* is what the sink holds; *pending* is an
overlay of changes handed out but not yet committed. Every ``diff_*`` sees
committed+pending, so the changes of one batch build on each other; the
caller calls :meth:`Mirror.commit` once the sink committed the batch, or
:meth:`Mirror.rollback` when it failed (the session then resyncs).

Each entity is kept as its JSON text (:mod:`~shardsync.entitytext`, as the sinks store it), not as
the parsed dict: half the memory, and the text goes on to the sink in ``Change.data`` (no row is
serialised twice).  Entities still compare by value, as parsed dicts did.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any

from shardsync.attribution import Attribution
from shardsync.change import ACCOUNT_KEYED_TYPES, ACCOUNT_VIA, EVENT_TYPES, UNPARSED, Change, Entity, Key, Origin
from shardsync.changeseq import Changes, SnapshotRun
from shardsync.entitytext import Slot, entity_of, same, text_of
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


_first = itemgetter(0)


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
      included; an unknown parent gives None and counts in :attr:`unattributed`.
    * A reconciliation's ``Deleted`` carries the entity as the mirror held it.
    """

    __slots__ = ("_committed", "_committed_counts", "_committed_size", "_committed_synced", "_counts", "_owners",
                 "_pending", "_size", "_synced")

    def __init__(self, entities: Iterable[tuple[str, int, Entity | str]] = (), *, synced: bool | None = None) -> None:
        """Preload committed state from the sink: each entity as a dict, or as the JSON text the sink holds.

        ``synced`` says whether the sink already went through a first snapshot; by default it is
        true when any entity was preloaded (a sink with history but no entities passes True).
        """
        committed: dict[Key, Slot] = {}
        for entity_type, ident, entity in entities:
            if not isinstance(ident, int) or isinstance(ident, bool):
                raise MirrorError(f"{entity_type}: preloaded entity has no integer id")
            text = entity if type(entity) is str else text_of(entity)
            committed[(entity_type, ident)] = entity if text is None else text
        counts: dict[str, int] = {}
        for entity_type, _ in committed:
            counts[entity_type] = counts.get(entity_type, 0) + 1
        self._committed = committed
        # None marks a committed key deleted in the pending batch.
        self._pending: dict[Key, Slot | None] = {}
        self._size = self._committed_size = len(committed)
        self._counts = counts
        self._committed_counts = dict(counts)
        self._synced = self._committed_synced = bool(committed) if synced is None else synced
        self._owners = Attribution(self.slot, entity_of)

    # -- reading (committed + pending) ---------------------------------------
    def get(self, key: Key) -> Entity | None:
        """The current entity for ``key``, pending changes included (a new dict on every call)."""
        slot = self.slot(key)
        return None if slot is None else entity_of(slot)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and self.slot(key) is not None

    def __len__(self) -> int:
        return self._size

    def items(self) -> Iterator[tuple[Key, Entity]]:
        """Current entities, pending changes included; do not diff while iterating."""
        return ((key, entity_of(slot)) for key, slot in self.held())

    def held(self) -> Iterator[tuple[Key, Slot]]:
        """:meth:`items` as held, unparsed (JSON texts): a snapshot :meth:`diff_snapshot` takes as it is."""
        yield from ((key, slot) for key, slot in self._committed.items() if key not in self._pending)
        yield from ((key, slot) for key, slot in self._pending.items() if slot is not None)

    def committed_items(self) -> Iterator[tuple[Key, Entity]]:
        """Entities as the sink holds them (pending changes excluded)."""
        return ((key, entity_of(slot)) for key, slot in self._committed.items())

    @property
    def unattributed(self) -> int:  # changes of a type attributed through a parent that was unknown
        return self._owners.unattributed

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
    def vanished(self, snapshot: Mapping[Key, Any], *, types: Collection[str] | None = None) -> list[Key]:
        """The current keys :meth:`diff_snapshot` would delete for ``snapshot``, in ``(entity_type, id)`` order."""
        return [key for key, _ in self._vanished(snapshot, self._scope(types))]

    def diff_snapshot(self, snapshot: Mapping[Key, Any], *, types: Collection[str] | None, received_at: str,
                      deleting: Sequence[Key] | None = None) -> Changes:
        """Reconcile with a complete snapshot and return the changes it implies.

        The snapshot is the whole truth for the shard: any current key absent
        from it is deleted, whatever its type. ``types`` is the configured
        scope: when given, snapshot entities of other types are ignored (the
        server sent what was not asked for) and current entities of other
        types are deleted (left over from an older configuration). ``None``
        takes the snapshot as is. Values are entities or their JSON text; keys come from checked ids.
        ``deleting`` narrows the deletions to those keys (sorted; the other
        vanished keys stay, for the caller to delete later with :meth:`delete_keys`, or never).
        """
        scope = self._scope(types)
        origin: Origin = "resync" if self._synced else "snapshot"
        if deleting is None:
            vanished = self._vanished(snapshot, scope)
        else:
            vanished = [(key, slot) for key in deleting
                        if key not in snapshot and (slot := self.slot(key)) is not None]
        changes = Changes(self._delete(vanished, origin, received_at))

        committed, pending, owners = self._committed, self._pending, self._owners
        # No owners.seen() here: remembering every parent of a million-entity snapshot cost ~140 bytes each
        # (a sixth of the peak), children or not; a child reads its parent's text once when it needs it.
        through, keyed = owners.through_parent, ACCOUNT_KEYED_TYPES
        # Texts (what the assembler hands over) become a compact run; an entity given as an object is a
        # Change of its own.  A run joins ``changes`` complete, before the next object, so order is kept.
        run = SnapshotRun(origin, received_at)
        orphans: list[tuple[SnapshotRun, int]] = []
        orphan_changes: list[Change] = []
        for key, value in snapshot.items():
            entity_type = key[0]
            if scope is not None and entity_type not in scope:
                continue
            current = pending[key] if key in pending else committed.get(key)
            text = value if type(value) is str else text_of(value)
            if current is not None and same(current, text, value):
                continue
            slot = value if text is None else text
            self._put(key, slot, current is not None)
            # A text is parsed for its account only, and the change holds the text alone.
            entity = entity_of(value) if type(value) is str else value
            # Attribution.account, written out: a million calls fewer.
            account = entity.get("id") if entity_type in keyed else entity.get("accountId")
            if type(account) is not int:
                account = through(entity_type, entity, False)
            orphan = account is None and entity_type in ACCOUNT_VIA
            if type(value) is str:
                if orphan:
                    orphans.append((run, len(run)))
                run.append(key, value, account, current is not None)
                continue
            change = Change(origin, entity_type, "Created" if current is None else "Updated", key[1], value,
                            received_at, account, text)
            if orphan:
                orphan_changes.append(change)
            changes.extend(run)
            changes.extend([change])
            run = SnapshotRun(origin, received_at)
        changes.extend(run)
        # A second look once the whole snapshot is in: a parent may come later in it.
        for holder, index in orphans:
            holder.set_account(index, owners.account(holder.entity_type(index), entity_of(holder.text(index))))
        for change in orphan_changes:
            change.account_id = owners.account(change.entity_type, change.entity)
        owners.trim()
        self._synced = True
        return changes

    def delete_keys(self, keys: Sequence[Key], *, origin: Origin, received_at: str) -> list[Change]:
        """Delete those of ``keys`` (sorted) that are current, as changes of ``origin``; absent keys are skipped."""
        vanished = [(key, slot) for key in keys if (slot := self.slot(key)) is not None]
        return self._delete(vanished, origin, received_at)

    @staticmethod
    def _scope(types: Collection[str] | None) -> frozenset[str] | None:
        if isinstance(types, str):  # a Collection[str] of characters: always a bug
            raise MirrorError(f"types must be a collection of names, not {types!r}")
        return None if types is None else frozenset(types)

    def _vanished(self, snapshot: Mapping[Key, Any], scope: frozenset[str] | None) -> list[tuple[Key, Slot]]:
        committed, pending = self._committed, self._pending
        # Written out per case rather than through a helper: with up to 1M
        # entities, per-key function calls dominate the cost.
        if scope is None and not pending:  # the resync case: nothing pending
            vanished = [(k, e) for k, e in committed.items() if k not in snapshot]
        elif scope is None:
            vanished = [(k, e) for k, e in committed.items() if k not in snapshot and k not in pending]
            vanished += [(k, e) for k, e in pending.items() if e is not None and k not in snapshot]
        else:
            vanished = [(k, e) for k, e in committed.items()
                        if (k[0] not in scope or k not in snapshot) and k not in pending]
            vanished += [(k, e) for k, e in pending.items()
                         if e is not None and (k[0] not in scope or k not in snapshot)]
        vanished.sort(key=_first)
        return vanished

    def _delete(self, vanished: list[tuple[Key, Slot]], origin: Origin, received_at: str) -> list[Change]:
        """Remove the current ``vanished`` entities; their Deleted changes, attributed before the removals."""
        # Attributed first: a fill and its order may vanish together.
        account = self._owners.account
        changes = []
        for (entity_type, ident), slot in vanished:
            text = slot if type(slot) is str else None  # parsed for the account only, as in diff_snapshot
            changes.append(Change(origin, entity_type, "Deleted", ident, slot if text is None else UNPARSED,
                                  received_at, account(entity_type, entity_of(slot)), text))
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
        changes: list[Change] = []
        deleting = event_type == "Deleted"
        pending, committed, owners = self._pending, self._committed, self._owners
        owners.trim()
        for entity in entities:
            ident = entity["id"]
            key = (entity_type, ident)
            current = pending[key] if key in pending else committed.get(key)
            if deleting:
                if current is None:
                    continue
                self._remove(key)
                # A Deleted event may carry only the id: the stored entity knows its account.
                owner, text = entity_of(current), None
            else:
                text = text_of(entity)
                if current is not None and same(current, text, entity):
                    continue
                slot = entity if text is None else text
                self._put(key, slot, current is not None)
                owners.seen(key, slot, entity)
                owner = entity
            account = ident if entity_type in ACCOUNT_KEYED_TYPES else owner.get("accountId")
            if type(account) is not int:
                account = owners.through_parent(entity_type, owner)
            changes.append(Change("live", entity_type, event_type, ident, entity, received_at, account, text))
        return changes

    def system(self, name: str, payload: Any, *, received_at: str) -> Change:
        """A system or unknown event as a change record; the state is untouched."""
        account = payload.get("accountId") if isinstance(payload, dict) else None
        return Change("system", name, "Event", None, payload, received_at, account if fits(account) else None)

    def rejected(self, refusal: Refusal, *, received_at: str) -> Change:
        """An entity the codec refused, as a change record (origin ``rejected``); the state is untouched."""
        account = refusal.account_id()
        if account is None and refusal.entity_type in ACCOUNT_VIA:  # a child: through its parent, uncounted
            account = self._owners.through_parent(refusal.entity_type, refusal.owner, False)
        return Change("rejected", refusal.entity_type, refusal.event_type, refusal.id, refusal.record(), received_at,
                      account if fits(account) else None)

    # -- batch boundaries -----------------------------------------------------
    def commit(self) -> None:
        """Make the pending changes committed: the sink committed their batch."""
        committed = self._committed
        if not committed:  # a first snapshot: the overlay has no tombstones, it becomes the state as it is
            self._committed, self._pending = self._pending, committed
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
    def slot(self, key: Key) -> Slot | None:
        """How ``key``'s entity is held now (its JSON text, or the object itself); None when absent."""
        return self._pending[key] if key in self._pending else self._committed.get(key)

    def committed_slot(self) -> Callable[[Key], Slot | None]:
        """The committed state's own lookup, fastest: for sharing equal texts (the assembler), not for the truth."""
        return self._committed.get

    def _put(self, key: Key, slot: Slot, existed: bool) -> None:
        self._pending[key] = slot
        if not existed:
            self._size += 1
            counts = self._counts
            counts[key[0]] = counts.get(key[0], 0) + 1

    def _remove(self, key: Key) -> None:
        """Delete a key known to be present."""
        if key in self._committed:
            self._pending[key] = None
        else:  # never committed: dropping the overlay entry restores "absent", no tombstone needed
            del self._pending[key]
        self._size -= 1
        counts = self._counts
        counts[key[0]] -= 1
        if not counts[key[0]]:
            del counts[key[0]]
