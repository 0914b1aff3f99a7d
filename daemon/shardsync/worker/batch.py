"""A shard's pending changes and their one way out: a sink transaction, then the mirror's acknowledgement.

The mirror hands out changes (live events, a snapshot's reconciliation) as a
pending overlay; :meth:`Batch.commit` writes them to the sink in one
transaction and only then commits them in the mirror: commit, then ack.  A
refused write rolls the mirror back to what the sink holds, and the session
resyncs; a sink that cannot be reached (``SinkUnavailable``) is an outage
instead (``outage.py``): the session goes on, the changes wait, bounded, and
the sink is tried again with backoff.  Every batch carries the shard's freshness row in its transaction
(``freshness.py``); :meth:`Batch.mark` writes the row alone, and
:meth:`Batch.prune` trims the change log to its retention.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from shardsync.backoff import Backoff
from shardsync.change import Change, Key, Origin
from shardsync.changeseq import Changes
from shardsync.clip import clip
from shardsync.mirror import Mirror, MirrorError
from shardsync.protocol import PropsEvent, Rejected, SystemEvent
from shardsync.ratelimit import LineLimiter, Throttled
from shardsync.sinks import Freshness, Sink, SinkError, SinkState, SinkUnavailable, open_sink
from shardsync.sinks.base import iso_utc
from shardsync.worker.freshness import StatusRow, sink_state
from shardsync.worker.options import WorkerOptions
from shardsync.worker.outage import OUTAGE_BATCHES, Outage
from shardsync.worker.parent import Vitals


class Batch:
    """The changes not yet committed, and when to commit them."""

    def __init__(
        self,
        sink: Sink,
        mirror: Mirror,
        *,
        batch_max: int,
        flush_interval: float,
        clock: Callable[[], float],
        vitals: Vitals,
        log: Any,
        wall: Callable[[], float] = time.time,
        status: StatusRow | None = None,
        retry: Backoff | None = None,
    ) -> None:
        self.sink = sink
        self.mirror = mirror
        #: The freshness row written with every batch (None: no row, as in unit tests of the batching alone).
        self.status = status
        self._batch_max = batch_max
        self._flush_interval = flush_interval
        self._clock = clock
        self._wall = wall
        self._vitals = vitals
        self.log = log
        #: Lines a server can cause at will: one per kind per 10 s, with a count (ratelimit.py).
        self._noise = Throttled(log, LineLimiter(clock))
        # A plain list on the live path; Changes once a snapshot's compact run joins it (changeseq.py).
        self._pending: list[Change] | Changes = []
        self._pending_since = 0.0
        self._retry = retry or Backoff(0.5, 60.0)
        #: The sink cannot be reached: the changes wait (outage.py).
        self.outage: Outage | None = None

    @classmethod
    def open(
        cls,
        options: WorkerOptions,
        remainder: int,
        *,
        announce: Callable[[float], None],
        clock: Callable[[], float],
        vitals: Vitals,
        log: Any,
    ) -> Batch:
        """Open the shard's sink and load the mirror from it; on SinkError nothing is left open.

        ``announce(seconds)`` is told before the load, which may block that long.
        """
        sink = open_sink(options.sink_kind, path=options.sink_path, dsn=options.sink_dsn, remainder=remainder,
                         divisor=options.divisor)
        try:
            announce(60.0)
            mirror = Mirror(sink.preload())
            status = StatusRow(remainder, options.divisor, options.expression, sink.status())
        except BaseException:
            sink.close()
            raise
        vitals.mirror = mirror
        return cls(sink, mirror, batch_max=options.batch_max, flush_interval=options.flush_interval, clock=clock,
                   vitals=vitals, log=log, status=status,
                   retry=Backoff(options.backoff_initial, options.backoff_max))

    def room(self) -> int:
        """How many more changes the batch takes before it must be committed."""
        if self.outage is not None:
            return self._batch_max  # reads stay batched; the outage bounds what is held
        return self._batch_max - len(self._pending)

    def apply(self, event: PropsEvent | SystemEvent, received_at: str) -> None:
        """Diff one live event (read at ``received_at``) against the mirror and keep its changes."""
        mirror = self.mirror
        if type(event) is PropsEvent:
            entity_type, event_type = event.entity_type, event.event_type
            try:
                changes = mirror.diff_props(entity_type, event_type, event.entities, received_at=received_at)
            except MirrorError as exc:
                # Kept as a system record so nothing is lost, and loudly.
                self._noise.warning(f"unusable {clip(entity_type, 60)}", "unusable_event_kept", error=clip(str(exc)),
                                    entity_type=clip(entity_type))
                payload = {"entityType": entity_type, "eventType": event_type, "entity": list(event.entities)}
                self.add([mirror.system("props", payload, received_at=received_at)])
                return
            self._vitals.events += 1
            if changes:
                self.add(changes)
            return
        if type(event) is Rejected:
            # Quarantine (quarantine.py): never applied; kept as origin "rejected", counted, logged.
            self.add([mirror.rejected(refusal, received_at=received_at) for refusal in event.refused])
            self._vitals.quarantined += len(event.refused)
            for refusal in event.refused:
                self._noise.warning(refusal.kind, "entity_quarantined", **refusal.describe())
            return
        assert isinstance(event, SystemEvent)
        self.add([mirror.system(event.name, event.data, received_at=received_at)])
        self._noise.info(f"system {clip(event.name, 60)}", "system_event", name=clip(event.name))

    def reconcile(
        self,
        snapshot: Mapping[Key, Any],
        *,
        received_at: str,
        deleting: Sequence[Key] | None = None,
    ) -> int:
        """Diff a complete snapshot into the pending batch; returns its changes.

        ``deleting`` narrows its deletions (``Mirror.diff_snapshot``); the
        caller applies the events buffered meanwhile and commits.
        """
        # The snapshot is the whole truth for the shard: whatever the server sent
        # is kept (live props are not filtered either), whatever it did not is gone.
        changes = self.mirror.diff_snapshot(snapshot, types=None, received_at=received_at, deleting=deleting)
        self.add(changes)
        return len(changes)

    def delete(self, keys: Sequence[Key], *, origin: Origin, received_at: str) -> int:
        """Add the deletions of those ``keys`` still current (held provisional deletions); returns how many."""
        changes = self.mirror.delete_keys(keys, origin=origin, received_at=received_at)
        self.add(changes)
        return len(changes)

    def add(self, changes: Sequence[Change]) -> None:
        outage = self.outage
        if outage is not None and changes and not outage.keep(len(self._pending), len(changes), _size(changes)):
            if self._pending:
                self.log.error("sink_buffer_overflowed", held=len(self._pending), limit=outage.limit,
                               held_bytes=outage.held_bytes, byte_limit=outage.byte_limit)
                self._pending = []
            return
        if changes and not self._pending:
            self._pending_since = self._clock()
        pending = self._pending
        if type(pending) is list and type(changes) is list:
            pending += changes
            return
        if type(pending) is list:
            pending = self._pending = Changes(pending)
        pending.extend(changes)

    def due(self, waiting: Callable[[], bool]) -> bool:
        """Commit now, or keep reading to make a bigger batch?

        A commit costs about as much as hundreds of changes, so under load the
        batch grows while more frames are ``waiting()``, up to ``batch_max``
        changes or ``flush_interval`` seconds of age; when the socket is
        quiet, the changes are committed at once.
        """
        self._noise.flush()  # summaries of held log lines, once their interval is over
        if self.outage is not None:
            return self.outage.due(self._clock())
        if not self._pending:
            return False
        if len(self._pending) >= self._batch_max:
            return True
        if self._clock() - self._pending_since >= self._flush_interval:
            return True
        return not waiting()

    def commit(self, *, state: SinkState | None = None, snapshot: bool = False) -> None:
        """Write the pending changes in one sink transaction, then acknowledge them to the mirror.

        The freshness row goes in the same transaction, in ``state`` (by
        default the one the worker's own state maps to); ``snapshot`` marks
        the batch that reconciled a snapshot (its commit is ``snapshot_at``).
        During an outage this is a retry when one is due, else nothing.
        """
        if self.outage is not None:
            self.outage.snapshot |= snapshot
            if self.outage.due(self._clock()):
                self._retry_sink(state)
            return
        if not self._pending:
            if snapshot:
                # A snapshot that changed nothing is still the newest snapshot: the row says so.
                self.mark(state, snapshot=True)
            return
        batch, self._pending = self._pending, []
        started = self._clock()
        at = self._wall()
        row = self._row(state, at, at if snapshot else None)
        try:
            self.sink.write(batch, row)
        except SinkUnavailable as exc:
            self._pending = batch
            self._unavailable(exc, snapshot)
            return
        except SinkError:
            self._vitals.sink_errors += 1
            self.mirror.rollback()
            raise
        self.mirror.commit()
        ended = self._clock()
        if row is not None:
            assert self.status is not None
            self.status.wrote(row, ended, self._vitals.last_event_at)
        self._vitals.committed(ended - started, at)

    def mark(self, state: SinkState | None = None, *, snapshot: bool = False) -> None:
        """Write the freshness row alone (no batch): on state changes, and while live and quiet; raises SinkError.

        During an outage the row waits for the commit that ends it."""
        if self.outage is not None:
            self.outage.snapshot |= snapshot
            return
        row = self._row(state, None, self._wall() if snapshot else None)
        if row is None:
            return
        try:
            self.sink.mark(row)
        except SinkUnavailable as exc:
            self._unavailable(exc, snapshot)
            return
        assert self.status is not None
        self.status.wrote(row, self._clock(), self._vitals.last_event_at)

    def flush(self) -> None:
        """Stopping: write what is pending now, outage or not; raises SinkError when that fails."""
        outage = self.outage
        if outage is None:
            self.commit()
            return
        outage.retry_at = self._clock()
        self.commit()
        if self.outage is not None:
            raise SinkUnavailable(f"sink still unreachable at stop after {self.outage.attempts} attempts")

    def retry_at(self) -> float | None:
        """When the unreachable sink is tried next (None: no outage)."""
        return None if self.outage is None else self.outage.retry_at

    def _unavailable(self, exc: SinkError, snapshot: bool) -> None:
        """The sink cannot be reached: the outage begins, its changes wait (the mirror is not rolled back)."""
        self._vitals.sink_errors += 1
        self._vitals.last_error = str(exc)
        self._vitals.sink_down_at = self._wall()
        now = self._clock()
        outage = self.outage = Outage(self._retry, now, OUTAGE_BATCHES * self._batch_max, snapshot=snapshot)
        delay = outage.failed(now)
        self.log.error("sink_unavailable", error=str(exc), held=len(self._pending), limit=outage.limit,
                       retry_in=round(delay, 3))

    def _retry_sink(self, state: SinkState | None) -> None:
        """Try the unreachable sink again: the changes held, or after an overflow the mirror's difference."""
        outage = self.outage
        assert outage is not None
        at = self._wall()
        changes: Sequence[Change]
        if outage.overflowed:
            # The records are gone: the sink gets the mirror's state, diffed as a snapshot against what it holds.
            current = dict(self.mirror.held())
            self.mirror.rollback()
            changes = self.mirror.diff_snapshot(current, types=None, received_at=iso_utc(at))
        else:
            changes = self._pending
        row = self._row(state, at if changes else None, at if outage.snapshot else None)
        started = self._clock()
        try:
            if changes:
                self.sink.write(changes, row)
            elif row is not None:
                self.sink.mark(row)
            else:
                self.sink.status()  # no row to write: a read tells whether the sink is back
        except SinkUnavailable as exc:
            self._vitals.sink_errors += 1
            self._vitals.last_error = str(exc)
            delay = outage.failed(self._clock())
            self.log.warning("sink_retry_failed", attempt=outage.attempts - 1, error=str(exc),
                             retry_in=round(delay, 3))
            return
        except SinkError:
            # Back, but refusing this batch: as any refused batch, the mirror returns to the sink and resyncs.
            self._vitals.sink_errors += 1
            self.outage, self._pending, self._vitals.sink_down_at = None, [], None
            self.mirror.rollback()
            raise
        self.outage, self._pending, self._vitals.sink_down_at = None, [], None
        self.mirror.commit()
        ended = self._clock()
        if row is not None:
            assert self.status is not None
            self.status.wrote(row, ended, self._vitals.last_event_at)
        if changes:
            self._vitals.committed(ended - started, at)
        self.log.info("sink_recovered", seconds=round(ended - outage.started, 3), attempts=outage.attempts,
                      changes=len(changes), overflowed=outage.overflowed, dropped=outage.dropped)

    def restate(self) -> None:
        """Write the freshness row when it no longer says the worker's state (a state change); never raises.

        A failed write is only logged: the next batch or resync tells the
        truth again, and a status row is never worth a session.
        """
        if self.status is None:
            return
        state = self.sink_state()
        if self.status.stale(state):
            try:
                self.mark(state)
            except SinkError as exc:
                self.log.warning("status_write_failed", error=str(exc), state=str(state))

    def sink_state(self) -> SinkState:
        """The freshness state the worker's own state maps to now."""
        return sink_state(self._vitals.state, self.mirror.snapshot_seen)

    def prune(self, retention: float) -> int:
        """Remove one small batch of change-log rows older than ``retention`` seconds; returns how many went."""
        return self.sink.prune(retention, now=self._wall())

    def _row(self, state: SinkState | None, commit_at: float | None, snapshot_at: float | None) -> Freshness | None:
        if self.status is None:
            return None
        return self.status.row(state if state is not None else self.sink_state(), event_at=self._vitals.last_event_at,
                               commit_at=commit_at, snapshot_at=snapshot_at)


def _size(changes: Sequence[Change]) -> int:
    """The JSON bytes of the changes' entities (computed only during an outage: no sink write runs then)."""
    dumps = orjson.dumps
    size = 0
    for change in changes:
        if change.data is not None:
            size += len(change.data)
            continue
        try:
            size += len(dumps(change.entity))
        except (TypeError, orjson.JSONEncodeError):
            size += 64  # unstorable: the sink refuses it when it is back, as it would have
    return size
