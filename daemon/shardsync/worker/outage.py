"""A sink that cannot be reached right now: when to try it again, and how much of the stream to hold meanwhile.

A sink raises :class:`~shardsync.sinks.SinkUnavailable` when its server is
gone (a PostgreSQL crash or restart), not when it refuses a batch.  Then the
session goes on: the socket stays open, the mirror keeps applying events,
and the batch keeps their change records, at most :data:`OUTAGE_BATCHES` x
``batch_max`` of them and at most :data:`OUTAGE_BYTES` of their entities as
JSON (a record holds its entity: a few large ones weigh more than many
small).  The sink is tried again with capped exponential
backoff (the worker's ``backoff_initial``/``backoff_max``).  Past the bound
the records are dropped and the outage is *overflowed*: once the sink is
back it gets the difference between what it holds and the mirror, as one
``resync`` (the mirror's state diffed as a snapshot), so the state is exact and memory
stays bounded by the shard's entities, while the change log of the outage
is compacted to one change per entity.  Nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from shardsync.backoff import Backoff

#: The change records an outage holds, in batches of ``batch_max``.
OUTAGE_BATCHES: Final = 20
#: The JSON size of the entities of the records an outage holds, at most.
OUTAGE_BYTES: Final = 32 * 1024 * 1024


@dataclass(slots=True)
class Outage:
    """One spell of the sink being unreachable (monotonic times)."""

    backoff: Backoff
    started: float
    limit: int
    byte_limit: int = OUTAGE_BYTES
    #: JSON bytes of the records held since the outage began.
    held_bytes: int = 0
    #: Failed attempts so far (the first write included).
    attempts: int = 0
    retry_at: float = 0.0
    #: The records were dropped: the sink is brought to the mirror's state instead.
    overflowed: bool = False
    #: Change records not kept since the overflow.
    dropped: int = 0
    #: A snapshot was reconciled meanwhile: the recovering commit moves ``snapshot_at``.
    snapshot: bool = False

    def failed(self, now: float) -> float:
        """An attempt failed at ``now``: the delay until the next one."""
        self.attempts += 1
        delay = self.backoff.delay(self.attempts)
        self.retry_at = now + delay
        return delay

    def due(self, now: float) -> bool:
        return now >= self.retry_at

    def keep(self, held: int, more: int, size: int = 0) -> bool:
        """Whether ``more`` records of ``size`` bytes still fit beside the ``held`` ones; False from the first
        that does not."""
        if not self.overflowed and held + more <= self.limit and self.held_bytes + size <= self.byte_limit:
            self.held_bytes += size
            return True
        self.overflowed = True
        self.dropped += more
        return False
