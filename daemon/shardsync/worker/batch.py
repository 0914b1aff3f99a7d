"""A shard's pending changes and their one way out: a sink transaction, then the mirror's acknowledgement.

The mirror hands out changes (live events, a snapshot's reconciliation) as a
pending overlay; :meth:`Batch.commit` writes them to the sink in one
transaction and only then commits them in the mirror: commit, then ack.  A
failed write rolls the mirror back to what the sink holds, and the session
resyncs.  Every batch carries the shard's freshness row in its transaction
(``freshness.py``); :meth:`Batch.mark` writes the row alone, and
:meth:`Batch.prune` trims the change log to its retention.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shardsync.change import Change, Entity, Key, Origin
from shardsync.clip import clip
from shardsync.mirror import Mirror, MirrorError
from shardsync.protocol import PropsEvent, Rejected, SystemEvent
from shardsync.ratelimit import LineLimiter, Throttled
from shardsync.sinks import Freshness, Sink, SinkError, SinkState, open_sink
from shardsync.worker.freshness import StatusRow, sink_state
from shardsync.worker.options import WorkerOptions
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
        self._pending: list[Change] = []
        self._pending_since = 0.0

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
            mirror = Mirror(sink.load())
            status = StatusRow(remainder, options.divisor, options.expression, sink.status())
        except BaseException:
            sink.close()
            raise
        vitals.mirror = mirror
        return cls(sink, mirror, batch_max=options.batch_max, flush_interval=options.flush_interval, clock=clock,
                   vitals=vitals, log=log, status=status)

    def room(self) -> int:
        """How many more changes the batch takes before it must be committed."""
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
        snapshot: Mapping[Key, Entity],
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

    def add(self, changes: list[Change]) -> None:
        if changes and not self._pending:
            self._pending_since = self._clock()
        self._pending += changes

    def due(self, waiting: Callable[[], bool]) -> bool:
        """Commit now, or keep reading to make a bigger batch?

        A commit costs about as much as hundreds of changes, so under load the
        batch grows while more frames are ``waiting()``, up to ``batch_max``
        changes or ``flush_interval`` seconds of age; when the socket is
        quiet, the changes are committed at once.
        """
        self._noise.flush()  # summaries of held log lines, once their interval is over
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
        """
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
        """Write the freshness row alone (no batch): on state changes, and while live and quiet; raises SinkError."""
        row = self._row(state, None, self._wall() if snapshot else None)
        if row is None:
            return
        self.sink.mark(row)
        assert self.status is not None
        self.status.wrote(row, self._clock(), self._vitals.last_event_at)

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
