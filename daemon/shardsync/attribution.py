"""Which account a change belongs to: the entity's own, else its parent chain's as the mirror holds it (pure).

The mirror holds entities as JSON text, so a parent's account would mean
parsing the parent for every child (three children of four in a book of
working orders).  What a parent says of its owner (its own account, its own
parent link) is remembered per key together with the very text object it was
read from: while the mirror holds that object, the memo is exact; once the
key holds another, the memo is stale and read again.  No invalidation can be
missed, because there is none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from shardsync.change import ACCOUNT_VIA, Entity, Key, account_id_of

#: Types some other type hangs off (order, command, fill, position, orderStrategy).
PARENT_TYPES: Final = frozenset(parent for _, parent in ACCOUNT_VIA.values())

#: Memo entries kept between snapshots; a snapshot's diff may hold up to MEMO_CAP (one per parent its
#: children named) until it is done.
MEMO_LIMIT: Final = 65_536
#: Never more than this many (~35 MiB): past it the memo starts over, and a parent is read again if needed.
MEMO_CAP: Final = 4 * MEMO_LIMIT

#: Parents looked through beyond the first (the longest chain, commandReport -> command -> order, needs 1).
_MAX_DEPTH: Final = 3


def owner_fields(entity_type: str, entity: Entity) -> tuple[int | None, Any]:
    """What ``entity`` says of its owner: its own account (an int, else None) and its parent link as given."""
    via = ACCOUNT_VIA.get(entity_type)
    return account_id_of(entity_type, entity), (entity.get(via[0]) if via is not None else None)


class Attribution:
    """Resolves accounts through the slots ``slot(key)`` returns; ``parse(slot)`` gives a slot's entity."""

    __slots__ = ("_memo", "_parse", "_slot", "unattributed")

    def __init__(self, slot: Callable[[Key], Any], parse: Callable[[Any], Entity]) -> None:
        self._slot = slot
        self._parse = parse
        # key -> (the slot read, its own account, its parent link)
        self._memo: dict[Key, tuple[Any, int | None, Any]] = {}
        #: Changes of a type attributed through a parent (ACCOUNT_VIA) whose parent was unknown.
        self.unattributed = 0

    def account(self, entity_type: str, entity: Entity, count: bool = True) -> int | None:
        """The account of ``entity``: its own, else its parent chain's as the mirror holds it now."""
        account = account_id_of(entity_type, entity)
        return account if account is not None else self.through_parent(entity_type, entity, count)

    def through_parent(self, entity_type: str, entity: Entity, count: bool = True) -> int | None:
        """The account of an entity without one of its own, from its parent chain (ACCOUNT_VIA)."""
        via = ACCOUNT_VIA.get(entity_type)
        if via is None:
            return None  # a type that belongs to no account (user, contract...)
        return self._via(via[1], entity.get(via[0]), count, 0)

    def seen(self, key: Key, slot: Any, entity: Entity) -> None:
        """``slot`` (now held for ``key``) was just parsed into ``entity``: remember what it says, if a parent."""
        if key[0] in PARENT_TYPES:
            self._memo[key] = (slot, *owner_fields(key[0], entity))

    def trim(self) -> None:
        """Drop the memo once it outgrew its bound (after a snapshot, and now and then on the live path)."""
        if len(self._memo) > MEMO_LIMIT:
            self._memo.clear()

    def _via(self, parent_type: str, parent_id: Any, count: bool, depth: int) -> int | None:
        key = (parent_type, parent_id)
        slot = self._slot(key) if type(parent_id) is int else None
        if slot is not None:
            hit = self._memo.get(key)
            if hit is None or hit[0] is not slot:
                hit = (slot, *owner_fields(parent_type, self._parse(slot)))
                if len(self._memo) >= MEMO_CAP:
                    self._memo.clear()
                self._memo[key] = hit
            if hit[1] is not None:
                return hit[1]
            via = ACCOUNT_VIA.get(parent_type)
            if via is None:
                return None  # the parent belongs to no account of its own kind: not counted
            if depth < _MAX_DEPTH:
                return self._via(via[1], hit[2], count, depth + 1)
        if count:
            self.unattributed += 1
        return None
