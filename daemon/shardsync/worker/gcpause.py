"""The cyclic garbage collector, kept out of the way of a bulk snapshot.

A snapshot of a million entities is a million new dicts. The collector,
triggered by allocations, walks them again and again while they are parsed
and diffed (a 500k-entity resync took 4.7 s with it and 1.3 s without), and
once the shard is live each full collection walks the whole mirror (after a
bulk step with collection merely switched off, the first one stalled the
live path 235 ms). Parsed JSON is acyclic and reference counting frees it, so
collection is off from the syncrequest until the snapshot is reconciled;
then everything alive is frozen (``gc.freeze``: never walked again, still
freed by reference counting) and collection is back on for what the live
stream allocates. An object frozen while alive that later becomes cyclic
garbage (part of a finished session) is freed at every ``FULL_EVERY``-th
snapshot, which first unfreezes and collects everything once: the leak is
bounded by that many sessions, the full walk paid once per that many.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, Protocol

#: Snapshots between two full collections of everything frozen.
FULL_EVERY: Final = 16


class Collector(Protocol):
    """What of the :mod:`gc` module this uses (tests pass a recorder)."""

    def disable(self) -> None: ...
    def enable(self) -> None: ...
    def isenabled(self) -> bool: ...
    def freeze(self) -> None: ...
    def unfreeze(self) -> None: ...
    def collect(self) -> int: ...


class SnapshotGc:
    """Pauses collection for a snapshot and freezes its result; both calls are idempotent."""

    def __init__(self, collector: Collector = gc) -> None:
        self._gc = collector
        self._paused = False
        self._snapshots = 0

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """A snapshot begins: collection off (after a full collection every FULL_EVERY-th time)."""
        if self._paused or not self._gc.isenabled():
            return  # paused already, or switched off by someone else: not ours to switch back on
        if self._snapshots % FULL_EVERY == 0:
            self._gc.unfreeze()
            self._gc.collect()
        self._snapshots += 1
        self._gc.disable()
        self._paused = True

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Paused for the block, frozen after it unless it raised (a preload of the mirror from the sink)."""
        self.pause()
        try:
            yield
        except BaseException:
            self.resume(freeze=False)
            raise
        self.resume()

    def resume(self, *, freeze: bool = True) -> None:
        """The snapshot is reconciled (``freeze``: what it built is kept) or abandoned: collection on again."""
        if not self._paused:
            return
        if freeze:
            self._gc.freeze()
        self._gc.enable()
        self._paused = False
