"""What a live worker does between batches: keep its freshness row fresh, keep its change log within retention.

A consumer reads ``shard_status`` to know whether the copy is current, so a
live shard rewrites it at least every ``heartbeat_interval`` even when no
batch carried it.  Retention (``events_retention``) is pruned off the hot
path: only on a pass that committed nothing and while nothing more waits on
the socket, one small batch (``sinks.base.PRUNE_BATCH`` rows, one short
transaction) every few seconds, sooner while a backlog remains.  A jsonl
prune folds a whole segment into its checkpoint, which may take longer: the
parent is told first, so it does not take the wait for a hang.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from shardsync.sinks import SinkError
from shardsync.sinks.base import PRUNE_BATCH
from shardsync.worker.batch import Batch

#: Seconds between prunes when the last one found less than a full batch.
PRUNE_EVERY: Final = 5.0
#: Seconds between prunes while a backlog remains (the last one removed a full batch).
PRUNE_BACKLOG: Final = 0.5
#: What a slow (jsonl) prune is announced to the parent as, in seconds.
SLOW_PRUNE: Final = 60.0


class Upkeep:
    """Freshness marks and retention for one shard's batch while its session is live."""

    def __init__(
        self,
        batch: Batch,
        *,
        heartbeat_interval: float,
        retention: float,
        slow_prune: bool,
        announce: Callable[[float], None],
        clock: Callable[[], float],
        log: Any,
    ) -> None:
        self._batch = batch
        self._interval = heartbeat_interval
        self._retention = retention
        self._slow_prune = slow_prune
        self._announce = announce
        self._clock = clock
        self.log = log
        self._next_prune = 0.0
        #: Change-log rows pruned so far.
        self.pruned = 0

    def deadline(self) -> float | None:
        """When the freshness row is due again."""
        status = self._batch.status
        return None if status is None else status.written_at + self._interval

    def run(self, now: float, waiting: Callable[[], bool]) -> None:
        """After a live pass that committed nothing: rewrite the row when due, prune when due and quiet.

        A failed freshness write raises SinkError (the sink is unusable: the
        session resyncs); a failed prune is only logged and tried again later.
        """
        batch = self._batch
        status = batch.status
        if status is not None and now >= status.written_at + self._interval:
            batch.mark()
        if not self._retention or now < self._next_prune:
            return
        if waiting():
            self._next_prune = now + PRUNE_BACKLOG
            return
        if self._slow_prune:
            self._announce(SLOW_PRUNE)
        try:
            removed = batch.prune(self._retention)
        except SinkError as exc:
            self.log.warning("prune_failed", error=str(exc))
            self._next_prune = self._clock() + PRUNE_EVERY
            return
        self.pruned += removed
        if removed:
            self.log.info("events_pruned", removed=removed, retention=self._retention)
        self._next_prune = self._clock() + (PRUNE_BACKLOG if removed >= PRUNE_BATCH else PRUNE_EVERY)
