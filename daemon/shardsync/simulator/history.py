"""When the server had each entity: the intervals behind the phantom-deletion oracle.

Per key that ever existed, a list of ``[created_at, deleted_at]`` intervals in
wall-clock epoch seconds, ``deleted_at`` None while the entity exists. An update
changes nothing here; a deletion closes the open interval; a re-creation of the
same key opens a new one. A client's ``Deleted`` of a key at time t is genuine
exactly when t is not inside any interval of that key (allowing for delivery
delay: the server's ``deleted_at`` comes before the client receives the event).

One small list per key: 100k entities cost a few tens of MiB at most.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shardsync.change import Key

Interval = tuple[float, float | None]


class History:
    """Existence intervals by (entityType, id); the clock is injected for tests."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._intervals: dict[Key, list[Interval]] = {}

    def created(self, key: Key) -> None:
        spans = self._intervals.get(key)
        if spans is None:
            self._intervals[key] = [(self.clock(), None)]
        elif spans[-1][1] is not None:
            spans.append((self.clock(), None))

    def deleted(self, key: Key) -> None:
        spans = self._intervals.get(key)
        if spans and spans[-1][1] is None:
            spans[-1] = (spans[-1][0], self.clock())

    def of(self, key: Key) -> list[Interval]:
        """The intervals of one key, oldest first ([] if it never existed)."""
        return list(self._intervals.get(key, ()))

    def all(self) -> dict[Key, list[Interval]]:
        return {key: list(spans) for key, spans in self._intervals.items()}

    def __len__(self) -> int:
        return len(self._intervals)
