"""The ``follow`` loop: read every shard after its position, write the lines, flush, then move the cursor."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import BinaryIO, TextIO

from shardsync.follow.cursor import Cursor, ShardId
from shardsync.follow.health import Health, changed, seconds
from shardsync.follow.record import Record, change_line, gap_line, status_line
from shardsync.follow.source import Source
from shardsync.sinks.base import Freshness, SinkState

#: Changes read from one shard per query.
READ_LIMIT = 2000


class Follower:
    """Merges every shard of ``source`` into ``out``; each change exactly once per shard, in seq order."""

    def __init__(
        self,
        source: Source,
        cursor: Cursor,
        out: BinaryIO,
        err: TextIO,
        *,
        from_start: bool = False,
        types: Collection[str] = (),
        accounts: Collection[int] = (),
        status_lines: bool = False,
        stale_after: float = 10.0,
        status_every: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.cursor = cursor
        self.out = out
        self.err = err
        self.types = frozenset(types)
        self.accounts = frozenset(accounts)
        self.status_lines = status_lines
        self.stale_after = stale_after
        self.status_every = status_every
        self.clock = clock
        # Shards present at the first look start at their end, unless asked for everything or resuming a
        # cursor file; a shard appearing later (a reload, a new divisor) is read from its start.
        self._tail_new = not from_start and not cursor.resumed
        self._known: set[ShardId] = set()
        self._reported: dict[ShardId, Health] = {}
        self._next_status = 0.0

    def step(self) -> int:
        """One pass over every shard; returns the number of changes read (filtered ones included)."""
        lines: list[bytes] = []
        shards = self.source.shards()
        positions = self.cursor.positions
        read = 0
        for shard in shards:
            if shard not in positions:
                positions[shard] = self.source.head(shard) if self._tail_new else 0
            records = self.source.read(shard, positions[shard], READ_LIMIT)
            if records:
                read += len(records)
                self._emit(shard, records, lines)
        present = self.source.present()
        for shard in sorted(self._known - present):
            # Its files were moved away (retire() marks a shard before it moves it) and it was read to the end.
            self._report(shard, Health(str(SinkState.RETIRED), False), None, lines)
            self._reported.pop(shard, None)
        self._known = present
        shards = [shard for shard in shards if shard in present]
        self._tail_new = False
        now = self.clock()
        if now >= self._next_status:
            self._next_status = now + self.status_every
            rows = self.source.statuses()
            for shard, health in changed(self._reported, {s: rows.get(s) for s in shards}, now, self.stale_after):
                self._report(shard, health, rows.get(shard), lines)
        if lines:
            self.out.write(b"".join(lines))
        self.out.flush()
        # Only now: the cursor never claims a line that is not on its way to the reader.
        self.cursor.save()
        return read

    def _emit(self, shard: ShardId, records: list[Record], lines: list[bytes]) -> None:
        remainder, divisor = shard
        after = self.cursor.positions[shard]
        if records[0].seq > after + 1 and after:
            self._say(f"shard {remainder}/{divisor}: changes {after + 1}..{records[0].seq - 1} were pruned "
                      "before they were read")
            if self.status_lines:
                lines.append(gap_line(remainder, divisor, after, records[0].seq))
        types, accounts = self.types, self.accounts
        for record in records:
            if (types and record.entity_type not in types) or (accounts and record.account_id not in accounts):
                continue
            lines.append(change_line(remainder, divisor, record))
        self.cursor.positions[shard] = records[-1].seq

    def _report(self, shard: ShardId, health: Health, row: Freshness | None, lines: list[bytes]) -> None:
        remainder, divisor = shard
        text = f"shard {remainder}/{divisor}: {health.state}"
        if health.stale:
            text += " but stale"
        if row is not None and row.last_event_at:
            seen = seconds(row.last_event_at)
            age = f", {self.clock() - seen:.1f} s ago" if seen is not None else ""
            text += f" (last event {row.last_event_at}{age})"
        self._say(text)
        if self.status_lines:
            lines.append(status_line(remainder, divisor, health.state, health.stale, row))

    def _say(self, text: str) -> None:
        print(f"shardsync follow: {text}", file=self.err, flush=True)

    def run(self, stopping: Callable[[], bool], wake_fd: int, interval: float) -> None:
        """Step until ``stopping()``; between passes with nothing new, wait for the source (NOTIFY or a poll)."""
        while not stopping():
            if self.step():
                continue
            if stopping():
                break
            # Woken early for the next status check, so a shard going stale is reported on time.
            self.source.wait(max(0.01, min(interval, self._next_status - self.clock())), wake_fd)
