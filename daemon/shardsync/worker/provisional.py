"""Provisional deletions: what a snapshot whose end was only inferred would delete, held for a grace period (pure).

When the quiet rule (``snapshot.py``) decided that a split snapshot was
complete, an entity missing from it may simply be in a part still to come.
Its creates and updates are applied at once (they are true whatever comes
later), but its deletions wait ``deletion_grace`` seconds: news of a held
key in the meantime settles it (a live Created/Updated means the server
has it: the deletion is cancelled; a live Deleted deletes it as a live
change), and a session that ends first (a late part, a drop, anything)
drops them all, never committed.  When the grace is over the rest commit as
the snapshot's own deletions (its origin and receive time).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from shardsync.change import Key, Origin


class Provisional:
    """The held deletions of one session and when they are due."""

    __slots__ = ("_keys", "origin", "overtaken", "received_at", "until")

    def __init__(self) -> None:
        self._keys: set[Key] = set()
        self.until: float | None = None
        self.origin: Origin = "resync"
        self.received_at = ""
        #: Held keys settled by live news since the last hold.
        self.overtaken = 0

    def hold(self, keys: Iterable[Key], *, until: float, origin: Origin, received_at: str) -> None:
        """Hold the deletions of ``keys`` until ``until``, to commit with ``origin`` and ``received_at``."""
        self._keys = set(keys)
        self.until = until
        self.origin = origin
        self.received_at = received_at
        self.overtaken = 0

    def __len__(self) -> int:
        return len(self._keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def touch(self, entity_type: str, entities: Sequence[dict[str, Any]]) -> None:
        """Live news of these entities (any event type) settles their held deletions."""
        keys = self._keys
        for entity in entities:
            key = (entity_type, entity["id"])
            if key in keys:
                keys.discard(key)
                self.overtaken += 1

    def deadline(self) -> float | None:
        """When the held deletions commit, if any are held."""
        return self.until if self._keys else None

    def due(self, now: float) -> bool:
        return bool(self._keys) and self.until is not None and now >= self.until

    def take(self) -> list[Key]:
        """The held keys, sorted (the order a snapshot's deletions have), and nothing held any more."""
        keys, self._keys = sorted(self._keys), set()
        self.until = None
        return keys

    def drop(self) -> int:
        """Forget every held deletion (the session ended); returns how many there were."""
        count = len(self._keys)
        self._keys = set()
        self.until = None
        return count
