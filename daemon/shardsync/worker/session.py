"""The worker's state machine: connect -> authorize -> sync -> live; reconnect on any fault.

Everything runs on one thread, in one selector over the WebSocket and the
parent's fds.  The parts each have their own room: ``parent.py`` (inbox,
heartbeats, state told to the parent, stop), ``receive.py`` (one read pass
and its deadlines), ``snapshot.py`` (the snapshot's parts and the quiet rule),
``batch.py`` (pending changes -> sink -> mirror); ``boot.py`` makes a forked
process a worker.  This module only decides what a message means in the
current state.
"""

from __future__ import annotations

import random
import selectors
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from shardsync import ipc, protocol
from shardsync.backoff import Backoff
from shardsync.ipc import ShardState
from shardsync.mirror import MirrorError
from shardsync.protocol import CloseFrame, PropsEvent, ProtocolError, Response, ShutdownEvent, SystemEvent
from shardsync.sinks import SinkError
from shardsync.worker.batch import Batch
from shardsync.worker.connection import Closed, Connection, ConnectionLost
from shardsync.worker.options import WorkerOptions
from shardsync.worker.parent import ParentLink, Stopping, Vitals, interruptible
from shardsync.worker.receive import Receiver
from shardsync.worker.snapshot import SnapshotAssembler, SyncRejected

AUTH_ID = 0
SYNC_ID = 1


class SessionEnded(Exception):
    """The current session is over; ``backoff`` overrides the usual reconnect delay."""

    def __init__(self, reason: str, *, backoff: float | None = None, reached_live: bool = False) -> None:
        self.backoff = backoff
        self.reached_live = reached_live
        super().__init__(reason)


class TokenRejected(SessionEnded):
    """authorize answered 401: the parent must hand out a fresh token."""


def utc_now() -> str:
    """Wall-clock time as ISO-8601 UTC with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
        self.conn: Connection | None = None
        self._receiver: Receiver | None = None
        self.batch: Batch | None = None
        #: The snapshot quiet period in use; doubled after a late part (SnapshotAssembler.on_late).
        self._quiet = options.snapshot_quiet
        self._failures = 0
        self._sync_sent_at = 0.0

    # --- the outer loop ---------------------------------------------------------

    def run(self) -> int:
        """Serve the shard until told to stop; returns the process exit code."""
        self.link.hello(self.remainder)
        try:
            self.batch = self._open_sink()
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
        self._close_connection(clean=not isinstance(end, TokenRejected))
        self.vitals.reconnects += 1
        if end.reached_live:
            self._failures = 0
        self._failures += 1
        delay = end.backoff if end.backoff is not None else self._backoff.delay(self._failures)
        self.log.warning("session_ended", reason=str(end), reconnect_in=round(delay, 3))
        self.vitals.last_error = str(end)
        self.link.wait(self._clock() + delay, state=ShardState.BACKOFF)

    # --- one session -----------------------------------------------------------------

    def _session(self, token: str) -> None:
        assert self.batch is not None
        self.link.set_state(ShardState.CONNECTING, busy_for=self.options.handshake_timeout)
        try:
            with interruptible():
                conn = Connection.open(
                    self.options.ws_url, handshake_timeout=self.options.handshake_timeout, ca_file=self.options.ca_file,
                    max_message_bytes=self.options.max_message_bytes,
                )
        except ConnectionLost as exc:
            raise SessionEnded(str(exc)) from None
        self.conn = conn
        self._receiver = receiver = Receiver(
            conn, self._selector, self.link, self.vitals, idle_timeout=self.options.idle_timeout, clock=self._clock,
            now_iso=self._now_iso,
        )
        self.vitals.connected_since = time.time()
        self.link.set_state(ShardState.AUTHORIZING)
        self.log.info("connected", url=self.options.ws_url)

        batch, apply = self.batch, self.batch.apply
        assembler: SnapshotAssembler | None = None
        reached_live = False
        opened = False
        try:
            while True:
                received_at, messages = receiver.read(batch.room(), None if assembler is None else assembler.deadline())
                for message in messages:
                    if reached_live and type(message) is PropsEvent:
                        apply(message, received_at)  # the hot path, ahead of the rarer cases
                        continue
                    if isinstance(message, Closed):
                        raise ConnectionLost(
                            f"server closed the WebSocket ({message.code} {message.reason})".strip(), message.code
                        )
                    if isinstance(message, ProtocolError):
                        raise message
                    if isinstance(message, protocol.OpenFrame):
                        if not opened:
                            opened = True
                            conn.send(protocol.encode_authorize(AUTH_ID, token))
                        continue
                    if assembler is None:
                        if isinstance(message, Response) and message.id == AUTH_ID:
                            self._on_authorized(message, token)
                            assembler = self._request_sync()
                        continue
                    self._dispatch(message, assembler, reached_live, received_at)
                if assembler is not None and not reached_live and assembler.check(self._clock()):
                    self._reconcile(assembler)
                    reached_live = True
                    self._failures = 0
                if batch.due(receiver.waiting):
                    batch.commit()
        except (ConnectionLost, ProtocolError, SinkError, SyncRejected, MirrorError) as exc:
            raise self._classify(exc, reached_live) from None
        except SessionEnded as end:
            end.reached_live = end.reached_live or reached_live
            raise

    def _on_authorized(self, response: Response, token: str) -> None:
        if response.status == 401:
            self.link.reject_token(token)
            raise TokenRejected(f"token rejected by authorize: {response.error_text}")
        if not response.ok:
            raise SessionEnded(f"authorize failed with {response.status}: {response.error_text}")
        self.log.info("authorized")

    def _request_sync(self) -> SnapshotAssembler:
        assert self.conn is not None
        options = self.options
        body = protocol.sync_request_body(
            divisor=options.divisor, remainder=self.remainder, expression=options.expression,  # type: ignore[arg-type]
            entity_types=options.entity_types, split_responses=options.split_responses,
        )
        self.conn.send(protocol.encode_request("user/syncrequest", SYNC_ID, "", body))
        self._sync_sent_at = self._clock()
        self.link.set_state(ShardState.SYNCING)
        return SnapshotAssembler(SYNC_ID, split=options.split_responses, quiet=self._quiet)

    def _dispatch(self, message: object, assembler: SnapshotAssembler, reconciled: bool, received_at: str) -> None:
        if isinstance(message, Response):
            if message.id != SYNC_ID:
                self.log.debug("unexpected_response", id=message.id, status=message.status)
            elif not assembler.complete:
                assembler.on_response(message, self._clock())
            elif (quiet := assembler.on_late(message)) is not None:
                self._quiet = quiet
                self.log.warning("late_snapshot_part", quiet=quiet)
                raise SessionEnded(f"late snapshot part: resync with a {quiet:g} s quiet period", backoff=0.0)
        elif isinstance(message, PropsEvent | SystemEvent):
            # Not "assembler.complete": props read in the same pass as the
            # completing part must wait for the reconciliation, or the snapshot
            # (older than they are) would undo them.
            if reconciled:
                assert self.batch is not None
                self.batch.apply(message, received_at)
            else:
                assembler.on_event(message, received_at)
        elif isinstance(message, ShutdownEvent):
            backoff = self.options.quota_backoff if message.quota else None
            reason = f"server shutdown: {message.reason_code} {message.reason or ''}".strip()
            raise SessionEnded(reason, backoff=backoff)
        elif isinstance(message, CloseFrame):
            raise SessionEnded(f"server closed the session: {message.code} {message.reason or ''}".strip())

    def _reconcile(self, assembler: SnapshotAssembler) -> None:
        assert self.batch is not None
        self.link.busy(max(10.0, len(assembler.entities) / 20_000))
        changes = self.batch.reconcile(assembler.entities, assembler.buffered, received_at=self._now_iso())
        self.vitals.snapshot_seconds = round(self._clock() - self._sync_sent_at, 3)
        self.link.set_state(ShardState.LIVE)
        self.log.info("live", parts=assembler.parts, entities=len(self.batch.mirror), changes=changes,
                      buffered=len(assembler.buffered))

    def _classify(self, exc: Exception, reached_live: bool) -> SessionEnded:
        backoff = None
        if isinstance(exc, ProtocolError):
            self.log.warning("protocol_error", error=str(exc), excerpt=exc.excerpt)
            reason = f"protocol error: {exc}"
        elif isinstance(exc, SinkError):
            self.log.error("sink_error", error=str(exc))
            reason = f"sink error: {exc}"
        else:
            if isinstance(exc, SyncRejected) and exc.status == 429:
                backoff = self.options.quota_backoff
            reason = str(exc)
        return SessionEnded(reason, backoff=backoff, reached_live=reached_live)

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
        try:
            if self.batch is not None:
                self.batch.commit()
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
