"""The worker's state machine: connect -> authorize -> sync -> live; reconnect on any fault.

Everything runs on one thread, in one selector over the WebSocket and the parent's fds.  The parts each
have their own room: ``parent.py`` (inbox, heartbeats, state told to the parent, stop), ``receive.py``
(one read pass and its deadlines), ``exchange.py`` (the requests, what is awaited by when, time penalties,
refusals told to the parent), ``snapshot.py`` (the snapshot's parts, the quiet rule and its bounds),
``reconcile.py`` (a snapshot into the sink without a false deletion), ``batch.py`` (pending changes ->
sink -> mirror), ``upkeep.py`` (the freshness row and retention while live), ``gcpause.py`` (the garbage
collector out of the way of a bulk snapshot); ``boot.py`` makes a forked process a worker.  This module
only decides what a message means in the current state.
"""

from __future__ import annotations

import random
import selectors
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from shardsync import ipc, protocol
from shardsync.backoff import Backoff
from shardsync.clip import clip
from shardsync.ipc import ShardState
from shardsync.mirror import MirrorError
from shardsync.protocol import CloseFrame, PropsEvent, ProtocolError, Response, ShutdownEvent, SystemEvent
from shardsync.sinks import SinkError
from shardsync.sinks.base import utc_now
from shardsync.worker.batch import Batch
from shardsync.worker.connection import Closed, Connection, ConnectionLost
from shardsync.worker.ending import SessionEnded, TokenRejected
from shardsync.worker.exchange import Exchange
from shardsync.worker.gcpause import SnapshotGc
from shardsync.worker.options import WorkerOptions
from shardsync.worker.parent import ParentLink, Stopping, Vitals, interruptible
from shardsync.worker.receive import NO_BYTE_LIMIT, Receiver
from shardsync.worker.reconcile import Reconciler
from shardsync.worker.snapshot import SnapshotAssembler, SyncRejected
from shardsync.worker.upkeep import Upkeep

#: Server text in the worker's own log lines is clipped to this.
LOG_TEXT = 300


class Worker:
    """One shard: its session loop, mirror and sink."""

    def __init__(
        self,
        options: WorkerOptions,
        remainder: int,
        *,
        inbox_fd: int,
        send: Callable[[ipc.Message], bool],
        clock: Callable[[], float] = time.monotonic,
        now_iso: Callable[[], str] = utc_now,
        rng: random.Random | None = None,
        wake_fd: int | None = None,
    ) -> None:
        self.options = options
        self.remainder = remainder
        self._clock = clock
        self._now_iso = now_iso
        self._backoff = Backoff(options.backoff_initial, options.backoff_max, rng)
        self._selector = selectors.DefaultSelector()
        self.log = structlog.get_logger("shardsync.worker").bind(remainder=remainder)
        self.vitals = Vitals()
        self.link = ParentLink(
            inbox_fd, send, self._selector, vitals=self.vitals, heartbeat_interval=options.heartbeat_interval,
            permits=options.permits, clock=clock, log=self.log, wake_fd=wake_fd,
        )
        self.link.on_state = self._on_state
        self.conn: Connection | None = None
        self._receiver: Receiver | None = None
        self.batch: Batch | None = None
        self._reconciler: Reconciler | None = None
        self._upkeep: Upkeep | None = None
        #: The snapshot quiet period in use; doubled after a late part (SnapshotAssembler.on_late).
        self._quiet = options.snapshot_quiet
        self._failures = 0
        self._sync_sent_at = 0.0
        self.exchange = Exchange(options, remainder, self.link, sync_sent=self._sync_sent, clock=clock, log=self.log)
        # One session's state (reset at its start, released at its end).
        self._assembler: SnapshotAssembler | None = None
        self._live = False
        self._sync_bytes_at = 0
        self._gc = SnapshotGc()

    # --- the outer loop ---------------------------------------------------------

    def run(self) -> int:
        """Serve the shard until told to stop; returns the process exit code."""
        self.link.hello(self.remainder)
        try:
            self.batch = batch = self._open_sink()
            options = self.options
            self._reconciler = Reconciler(batch, ratio=options.max_resync_delete_ratio,
                                          grace=options.deletion_grace, clock=self._clock, log=self.log)
            self._upkeep = Upkeep(batch, heartbeat_interval=options.heartbeat_interval,
                                  retention=options.events_retention, slow_prune=options.sink_kind == "jsonl",
                                  announce=self.link.busy, clock=self._clock, log=self.log)
            self._on_state(self.vitals.state)
            while True:
                token = self.link.await_token()
                self.link.take_permit()
                try:
                    self._session(token)
                except SessionEnded as end:
                    self._after_session(end)
        except Stopping:
            pass
        finally:
            self._shutdown()
        return 0

    def _open_sink(self) -> Batch:
        attempt = 0
        while True:
            try:
                with self._gc.bulk():  # the mirror's preload from the sink is a bulk build too
                    batch = Batch.open(self.options, self.remainder, announce=self.link.busy, clock=self._clock,
                                       vitals=self.vitals, log=self.log)
            except SinkError as exc:
                attempt += 1
                self.vitals.last_error = str(exc)
                self.log.error("sink_open_failed", error=str(exc))
                self.link.wait(self._clock() + self._backoff.delay(attempt), state=ShardState.BACKOFF)
                continue
            self.log.info("sink_opened", kind=self.options.sink_kind, entities=len(batch.mirror))
            return batch

    def _after_session(self, end: SessionEnded) -> None:
        # The traceback holds the session's frames, and with them whatever it
        # had assembled: released now, not after the backoff.
        end.__traceback__ = end.__context__ = end.__cause__ = None
        self._end_session()
        self._close_connection(clean=not isinstance(end, TokenRejected))
        self.vitals.reconnects += 1
        if end.reached_live:
            self._failures = 0
        self._failures += 1
        delay = end.backoff if end.backoff is not None else self._backoff.delay(self._failures)
        self.log.warning("session_ended", reason=clip(str(end), LOG_TEXT), reconnect_in=round(delay, 3))
        self.vitals.last_error = str(end)
        self.link.wait(self._clock() + delay, state=ShardState.BACKOFF)

    def _end_session(self) -> None:
        """Forget everything the session held: its question, its snapshot, its provisional deletions."""
        self.exchange.end()
        self._gc.resume(freeze=False)
        self._assembler = None
        self._live = False
        if self._reconciler is not None:
            self._reconciler.drop()

    # --- one session -----------------------------------------------------------------

    def _session(self, token: str) -> None:
        assert self.batch is not None
        options = self.options
        self.link.set_state(ShardState.CONNECTING, busy_for=options.handshake_timeout)
        try:
            with interruptible():
                conn = Connection.open(
                    options.ws_url, handshake_timeout=options.handshake_timeout, ca_file=options.ca_file,
                    max_message_bytes=options.max_message_bytes,
                )
        except ConnectionLost as exc:
            raise SessionEnded(str(exc)) from None
        self.conn = conn
        self._receiver = receiver = Receiver(
            conn, self._selector, self.link, self.vitals, idle_timeout=options.idle_timeout, clock=self._clock,
            now_iso=self._now_iso,
        )
        self.vitals.connected_since = time.time()
        self.link.set_state(ShardState.AUTHORIZING)
        self.log.info("connected", url=options.ws_url)
        self._live = False
        self._assembler = None
        self.exchange.begin(conn, token)

        batch = self.batch
        try:
            while True:
                live = self._live
                received_at, messages = receiver.read(
                    batch.room(), self._due(), NO_BYTE_LIMIT if live else self._byte_room()
                )
                apply = self._apply
                for message in messages:
                    if live and type(message) is PropsEvent:
                        apply(message, received_at)  # the hot path, ahead of the rarer cases
                        continue
                    self._on_message(message, received_at)
                self._after_pass()
        except (ConnectionLost, ProtocolError, SinkError, SyncRejected, MirrorError) as exc:
            raise self._classify(exc) from None
        except SessionEnded as end:
            end.reached_live = end.reached_live or self._live
            raise

    @property
    def _apply(self) -> Callable[[PropsEvent | SystemEvent, str], None]:
        assert self._reconciler is not None
        return self._reconciler.apply

    def _due(self) -> float | None:
        """The session's next own deadline: an answer, a resend, the snapshot's, held deletions, the status row
        (or, while the sink cannot be reached, its next try: the row waits for it)."""
        batch = self.batch
        if self._live:  # once per pass of the hot path: nothing is awaited any more, two deadlines at most
            assert self._reconciler is not None and self._upkeep is not None and batch is not None
            due = self._upkeep.deadline() if batch.outage is None else batch.outage.retry_at
            held = self._reconciler.deadline()
            return held if held is not None and (due is None or held < due) else due
        candidates = (self.exchange.deadline(), None if self._assembler is None else self._assembler.next_due(),
                      None if batch is None else batch.retry_at())
        return min((at for at in candidates if at is not None), default=None)

    def _byte_room(self) -> int:
        """How many more bytes the snapshot being assembled may take (a pass stops there)."""
        if self._assembler is None or self._assembler.complete or self._receiver is None:
            return NO_BYTE_LIMIT
        return max(1, self.options.max_snapshot_bytes - (self._receiver.bytes_read - self._sync_bytes_at) + 1)

    def _on_message(self, message: object, received_at: str) -> None:
        if isinstance(message, Closed):
            raise ConnectionLost(f"server closed the WebSocket ({message.code} {message.reason})".strip(), message.code)
        if isinstance(message, ProtocolError):
            raise message
        if isinstance(message, protocol.OpenFrame):
            self.exchange.on_open()
        elif isinstance(message, Response):
            if not self.exchange.on_response(message):
                self._on_snapshot_part(message)
        elif isinstance(message, PropsEvent | SystemEvent):
            # Not "assembler.complete": props read in the same pass as the
            # completing part must wait for the reconciliation, or the snapshot
            # (older than they are) would undo them.
            if self._live:
                self._apply(message, received_at)
            elif self._assembler is not None:
                self._assembler.on_event(message, received_at)
        elif isinstance(message, ShutdownEvent):
            raise self.exchange.on_shutdown(message)
        elif isinstance(message, CloseFrame):
            raise SessionEnded(f"server closed the session: {message.code} {message.reason or ''}".strip())

    def _on_snapshot_part(self, response: Response) -> None:
        assembler = self._assembler
        if assembler is None or response.id != assembler.request_id:
            self.log.debug("unexpected_response", id=response.id, status=response.status)
        elif not assembler.complete:
            assembler.on_response(response, self._clock())
        elif (quiet := assembler.on_late(response)) is not None:
            self._quiet = quiet
            self.log.warning("late_snapshot_part", quiet=quiet)
            raise SessionEnded(f"late snapshot part: resync with a {quiet:g} s quiet period", backoff=0.0)

    def _sync_sent(self, request_id: int, resend: bool) -> None:
        """The syncrequest went out: a new snapshot starts (and, unless it is a penalty's resend, a new session)."""
        assert self._receiver is not None and self.batch is not None and self.batch.status is not None
        options = self.options
        self._sync_sent_at = now = self._clock()
        self._sync_bytes_at = self._receiver.bytes_read
        self._assembler = SnapshotAssembler(
            request_id, split=options.split_responses, quiet=self._quiet, started=now,
            timeout=options.snapshot_timeout, max_bytes=options.max_snapshot_bytes,
            max_entities=options.max_snapshot_entities, held=self.batch.mirror.committed_slot(),
        )
        self._gc.pause()
        if not resend:
            self.batch.status.new_session()
            self.link.set_state(ShardState.SYNCING)

    def _after_pass(self) -> None:
        """What is due after a read pass: answers and resends, the snapshot, held deletions, commits, upkeep."""
        now = self._clock()
        exchange = self.exchange
        if exchange.awaiting is not None:
            exchange.check(now)
        batch = self.batch
        reconciler = self._reconciler
        assert batch is not None and reconciler is not None and self._receiver is not None
        if not self._live:
            assembler = self._assembler
            if assembler is not None and exchange.awaiting is None:
                self._check_snapshot(assembler, now)
        elif reconciler.due(now):
            reconciler.commit_held()
        if batch.due(self._receiver.waiting):
            batch.commit()
        elif self._live:
            assert self._upkeep is not None
            self._upkeep.run(now, self._receiver.waiting)

    def _check_snapshot(self, assembler: SnapshotAssembler, now: float) -> None:
        assert self._receiver is not None
        received = self._receiver.bytes_read - self._sync_bytes_at
        bound = assembler.exceeded(now, received)
        if bound is not None:
            seconds = round(now - assembler.started, 3)
            self.log.warning("snapshot_incomplete", bound=bound, parts=assembler.parts,
                             entities=len(assembler.entities), bytes=received, seconds=seconds)
            raise SessionEnded(f"snapshot incomplete: {bound} exceeded after {seconds:g} s, {assembler.parts} "
                               f"parts, {len(assembler.entities)} entities, {received} bytes")
        if assembler.check(now):
            self._reconcile(assembler)

    def _reconcile(self, assembler: SnapshotAssembler) -> None:
        assert self.batch is not None and self._reconciler is not None
        self.link.busy(max(10.0, len(assembler.entities) / 20_000))
        outcome = self._reconciler.reconcile(assembler, self._now_iso())
        parts, buffered = assembler.parts, len(assembler.buffered)
        assembler.release()
        self._gc.resume()
        self.vitals.snapshot_seconds = round(self._clock() - self._sync_sent_at, 3)
        if outcome.resync:
            raise SessionEnded(f"mass deletion held back: {outcome.verdict.suspected} of "
                               f"{len(self.batch.mirror)} entities missing; resyncing to confirm", backoff=0.0)
        self._live = True
        self._failures = 0
        self.link.set_state(ShardState.LIVE)
        self.log.info("live", parts=parts, completion=assembler.completion, entities=len(self.batch.mirror),
                      changes=outcome.changes, held=outcome.held, buffered=buffered)

    def _classify(self, exc: Exception) -> SessionEnded:
        backoff = None
        if isinstance(exc, ProtocolError):
            self.log.warning("protocol_error", error=str(exc), excerpt=exc.excerpt)
            reason = f"protocol error: {exc}"
        elif isinstance(exc, SinkError):
            self.log.error("sink_error", error=str(exc))
            reason = f"sink error: {exc}"
        else:
            if isinstance(exc, SyncRejected):
                backoff = self.exchange.refused(exc)
            reason = str(exc)
        return SessionEnded(reason, backoff=backoff, reached_live=self._live)

    # --- freshness -----------------------------------------------------------------

    def _on_state(self, state: ShardState) -> None:
        """Every state change reaches the shard's freshness row."""
        if self.batch is not None:
            self.batch.restate()

    # --- teardown --------------------------------------------------------------------------

    def _close_connection(self, *, clean: bool) -> None:
        conn, self.conn = self.conn, None
        self.vitals.connected_since = self.vitals.last_frame_at = None
        if self._receiver is not None:
            self._receiver.detach()
            self._receiver = None
        if conn is None:
            return
        if clean:
            conn.close(timeout=1.0)
        else:
            conn.abort()

    def _shutdown(self) -> None:
        self.vitals.state = ShardState.STOPPING
        self._end_session()
        try:
            if self.batch is not None:
                self.batch.flush()
                # Written whether or not a batch just carried it: "stopped" is the last word.
                self._on_state(ShardState.STOPPING)
        except SinkError as exc:
            # Unflushed live changes are healed by the next start's resync.
            self.log.error("final_flush_failed", error=str(exc))
        self._close_connection(clean=True)
        if self.batch is not None:
            self.batch.sink.close()
        self._selector.close()


def run_in_process(
    options: WorkerOptions,
    remainder: int,
    inbox_fd: int,
    on_message: Callable[[ipc.Message], None],
    **kwargs: Any,
) -> int:
    """Run a worker on this thread, reporting its messages to ``on_message`` (tests, demo)."""

    def send(message: ipc.Message) -> bool:
        on_message(message)
        return True

    return Worker(options, remainder, inbox_fd=inbox_fd, send=send, **kwargs).run()


__all__: Sequence[str] = ("SessionEnded", "TokenRejected", "Worker", "run_in_process")
