"""A batch's changes in order, held as segments: lists of changes and compact runs of a snapshot's upserts.

A million-entity snapshot is a million changes that exist only to be written:
as :class:`~shardsync.change.Change` objects they were ~130 bytes each
(the object, its account int, a list slot), a sixth of a 1M first snapshot's
peak.  A :class:`SnapshotRun` keeps what differs between them (the key, the
text, the account, created or updated) in parallel lists and makes each
change only when it is read; the sqlite sink reads them a piece (a slice) at
a time, so they never all exist.  :class:`Changes` chains runs and lists
into one sequence, which is what the batch holds and the sinks are given.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from typing import Any, overload

from shardsync.change import UNPARSED, Change, Key, Origin

CREATED, UPDATED = "Created", "Updated"


class SnapshotRun(Sequence[Change]):
    """Creates and updates of one snapshot, each an entity's key, JSON text and account.

    A :class:`Changes` holds a run by reference and counts it when it joins: a run is appended to only
    before that (its accounts may still be set after).
    """

    __slots__ = ("_accounts", "_interned", "_keys", "_texts", "_updated", "origin", "received_at")

    def __init__(self, origin: Origin, received_at: str) -> None:
        self.origin = origin
        self.received_at = received_at
        self._keys: list[Key] = []
        self._texts: list[str] = []
        self._accounts: list[int | None] = []
        self._updated = bytearray()
        # One int object per account, not one per change: the accounts of a shard are few.
        self._interned: dict[int, int] = {}

    def append(self, key: Key, text: str, account: int | None, updated: bool) -> None:
        self._keys.append(key)
        self._texts.append(text)
        self._accounts.append(None if account is None else self._interned.setdefault(account, account))
        self._updated.append(updated)

    def set_account(self, index: int, account: int | None) -> None:
        """The mirror's second look at an orphan, once the whole snapshot is in."""
        self._accounts[index] = None if account is None else self._interned.setdefault(account, account)

    def entity_type(self, index: int) -> str:
        return self._keys[index][0]

    def text(self, index: int) -> str:
        return self._texts[index]

    def __len__(self) -> int:
        return len(self._keys)

    @overload
    def __getitem__(self, index: int) -> Change: ...
    @overload
    def __getitem__(self, index: slice) -> list[Change]: ...

    def __getitem__(self, index: int | slice) -> Change | list[Change]:
        if isinstance(index, slice):
            return [self._change(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("change index out of range")
        return self._change(index)

    def __iter__(self) -> Iterator[Change]:
        origin, received_at = self.origin, self.received_at
        for key, text, account, updated in zip(self._keys, self._texts, self._accounts, self._updated, strict=True):
            yield Change(origin, key[0], UPDATED if updated else CREATED, key[1], UNPARSED, received_at, account, text)

    def _change(self, i: int) -> Change:
        key = self._keys[i]
        return Change(self.origin, key[0], UPDATED if self._updated[i] else CREATED, key[1], UNPARSED,
                      self.received_at, self._accounts[i], self._texts[i])

    def __eq__(self, other: object) -> bool:
        return _equal(self, other)

    __hash__ = None  # type: ignore[assignment]


class Changes(Sequence[Change]):
    """Changes in order across segments; appending a list extends the last list segment, a run is kept as is."""

    __slots__ = ("_ends", "_segments")

    def __init__(self, changes: Iterable[Change] = ()) -> None:
        self._segments: list[Sequence[Change]] = []
        self._ends: list[int] = []  # each segment's end offset
        self.extend(changes)

    def extend(self, changes: Iterable[Change]) -> None:
        if isinstance(changes, Changes):
            for segment in changes._segments:
                self._add(segment)
        elif isinstance(changes, SnapshotRun):
            self._add(changes)
        else:
            self._add(changes if isinstance(changes, list) else list(changes))

    def _add(self, segment: Sequence[Change]) -> None:
        if not segment:
            return
        segments, ends = self._segments, self._ends
        end = (ends[-1] if ends else 0) + len(segment)
        last = segments[-1] if segments else None
        if type(segment) is list and type(last) is list:
            last.extend(segment)  # the list segments are this sequence's own copies
            ends[-1] = end
            return
        # A list is copied when adopted: the caller's list must not change with this sequence.
        segments.append(list(segment) if type(segment) is list else segment)
        ends.append(end)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    @overload
    def __getitem__(self, index: int) -> Change: ...
    @overload
    def __getitem__(self, index: slice) -> list[Change]: ...

    def __getitem__(self, index: int | slice) -> Change | list[Change]:
        size = len(self)
        if isinstance(index, slice):
            start, stop, step = index.indices(size)
            if step != 1:
                return list(self)[index]
            out: list[Change] = []
            at = bisect_right(self._ends, start)
            while start < stop and at < len(self._segments):
                begin = self._ends[at - 1] if at else 0
                end = min(stop, self._ends[at])
                out += self._segments[at][start - begin:end - begin]
                start, at = end, at + 1
            return out
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError("change index out of range")
        at = bisect_right(self._ends, index)
        return self._segments[at][index - (self._ends[at - 1] if at else 0)]

    def __iter__(self) -> Iterator[Change]:
        return chain.from_iterable(self._segments)

    def __eq__(self, other: object) -> bool:
        return _equal(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Changes({list(self)!r})"


def _equal(ours: Sequence[Change], other: Any) -> bool:
    # Compared as the lists they stand for (tests compare them with lists).
    if not isinstance(other, Sequence) or isinstance(other, str | bytes):
        return NotImplemented  # type: ignore[no-any-return]
    return len(ours) == len(other) and all(a == b for a, b in zip(ours, other, strict=True))
