"""The worker's one loop: connect, authorize, sync, reconcile, stream; reconnect on any fault.

Everything runs on one thread: a selector over the WebSocket and the inbox
pipe from the parent, with a timeout taken from the nearest deadline (client
``[]``, heartbeat to the parent, idle cut-off, snapshot quiet period, backoff
end).  The heartbeat to the parent is sent from this loop, so a wedged loop
looks dead to the parent, which is the point.
"""

from __future__ import annotations

import contextlib
import os
import random
import selectors
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from shardsync import ipc, protocol
from shardsync.backoff import Backoff
from shardsync.change import Change
from shardsync.ipc import ShardState
from shardsync.mirror import Mirror, MirrorError
from shardsync.protocol import (
    CloseFrame,
    MessagesFrame,
    PropsEvent,
    ProtocolError,
    Response,
    ShutdownEvent,
    SystemEvent,
)
from shardsync.secrets import fingerprint
from shardsync.sinks import Sink, SinkError, open_sink
from shardsync.worker.connection import Closed, Connection, ConnectionLost
from shardsync.worker.options import WorkerOptions
from shardsync.worker.snapshot import SnapshotAssembler, SyncRejected

AUTH_ID = 0
SYNC_ID = 1
#: The quiet period never grows beyond this (a late part doubles it).
MAX_QUIET = 30.0


class SessionEnded(Exception):
    """The current session is over; ``backoff`` overrides the usual reconnect delay."""

    def __init__(self, reason: str, *, backoff: float | None = None, reached_live: bool = False) -> None:
        self.backoff = backoff
        self.reached_live = reached_live
        super().__init__(reason)


class TokenRejected(SessionEnded):
    """authorize answered 401: the parent must hand out a fresh token."""


class Stopping(Exception):
    """The parent asked us to stop, or the parent is gone."""


#: True while the worker sits in a blocking call that only a signal can cut
#: short (the TLS/WebSocket handshake, up to handshake_timeout).
_interruptible = False


def on_terminate(signum: int, frame: object) -> None:
    """SIGTERM handler of a forked worker.

    Normally it does nothing: the wakeup fd wakes the loop, which stops
    cleanly.  During a handshake nothing reads that fd for seconds, so the
    handshake is abandoned instead, and a dying parent's workers go at once.
    """
    if _interruptible:
        raise Stopping


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
        self._inbox = ipc.Reader(inbox_fd)
        os.set_blocking(inbox_fd, False)
        self._send = send
        self._clock = clock
        self._now_iso = now_iso
        self._backoff = Backoff(options.backoff_initial, options.backoff_max, rng)
        self._selector = selectors.DefaultSelector()
        self._selector.register(inbox_fd, selectors.EVENT_READ, "inbox")
        if wake_fd is not None:
            # The signal wakeup fd of a forked worker: SIGTERM means stop cleanly.
            self._selector.register(wake_fd, selectors.EVENT_READ, "wake")
        self.log = structlog.get_logger("shardsync.worker").bind(remainder=remainder)

        self.token: str | None = None
        self._rejected: str | None = None
        self._permit = not options.permits
        self._stopping = False
        self.conn: Connection | None = None
        self._ws_fd = -1
        self.sink: Sink | None = None
        self.mirror: Mirror | None = None
        self._pending: list[Change] = []
        self._pending_since = 0.0
        #: The snapshot quiet period in use; doubled after a late part (see _late_part).
        self._quiet = options.snapshot_quiet
        #: When the frames being handled were received (one timestamp per read pass).
        self._received_at = ""

        self.state = ShardState.STARTING
        self.connected_since: float | None = None
        self.last_frame_at: float | None = None
        self.frames = 0
        self.events = 0
        self.reconnects = 0
        self.last_error: str | None = None
        self._failures = 0
        self._next_beat = 0.0
        self._next_ping = 0.0

    # --- the outer loop ---------------------------------------------------------

    def run(self) -> int:
        """Serve the shard until told to stop; returns the process exit code."""
        self._send(ipc.Hello(remainder=self.remainder, pid=os.getpid()))
        try:
            self._open_sink()
            while True:
                self._await_token()
                self._await_permit()
                try:
                    self._session()
                except SessionEnded as end:
                    self._after_session(end)
        except Stopping:
            pass
        finally:
            self._shutdown()
        return 0

    def _open_sink(self) -> None:
        attempt = 0
        while True:
            try:
                self.sink = open_sink(
                    self.options.sink_kind,
                    path=self.options.sink_path,
                    dsn=self.options.sink_dsn,
                    remainder=self.remainder,
                    divisor=self.options.divisor,
                )
                self._set_busy(60.0)
                self.mirror = Mirror(self.sink.load())
                self.log.info("sink_opened", kind=self.options.sink_kind, entities=len(self.mirror))
                return
            except SinkError as exc:
                attempt += 1
                if self.sink is not None:
                    self.sink.close()
                    self.sink = None
                self._fail("sink_open_failed", str(exc))
                self._wait(self._clock() + self._backoff.delay(attempt), state=ShardState.BACKOFF)

    def _after_session(self, end: SessionEnded) -> None:
        self._close_connection(clean=not isinstance(end, TokenRejected))
        self.reconnects += 1
        if end.reached_live:
            self._failures = 0
        self._failures += 1
        delay = end.backoff if end.backoff is not None else self._backoff.delay(self._failures)
        self.log.warning("session_ended", reason=str(end), reconnect_in=round(delay, 3))
        self.last_error = str(end)
        self._wait(self._clock() + delay, state=ShardState.BACKOFF)

    def _await_token(self) -> None:
        while self.token is None:
            self._wait(None, state=ShardState.WAITING_TOKEN, until=lambda: self.token is not None)

    def _await_permit(self) -> None:
        if self._permit:
            return
        self._send(ipc.NeedPermit())
        self._wait(None, state=ShardState.WAITING_PERMIT, until=lambda: self._permit)

    # --- one session -----------------------------------------------------------------

    def _session(self) -> None:
        assert self.token is not None and self.mirror is not None
        if self.options.permits:
            self._permit = False  # one permit, one connect
        self._set_state(ShardState.CONNECTING, busy_for=self.options.handshake_timeout)
        global _interruptible  # noqa: PLW0603 - read by the signal handler, which has no other way in
        _interruptible = True
        try:
            self.conn = Connection.open(
                self.options.ws_url,
                handshake_timeout=self.options.handshake_timeout,
                ca_file=self.options.ca_file,
            )
        except ConnectionLost as exc:
            raise SessionEnded(str(exc)) from None
        finally:
            _interruptible = False
        self._ws_fd = self.conn.fileno()
        self._selector.register(self._ws_fd, selectors.EVENT_READ, "ws")
        now = self._clock()
        self.connected_since = time.time()
        self.last_frame_at = now
        self._next_ping = now + protocol.HEARTBEAT_INTERVAL
        self._set_state(ShardState.AUTHORIZING)
        self.log.info("connected", url=self.options.ws_url)

        assembler: SnapshotAssembler | None = None
        token = self.token
        reached_live = False
        opened = False
        try:
            while True:
                for message in self._receive(assembler):
                    if reached_live and type(message) is PropsEvent:
                        self._apply(message)  # the hot path, ahead of the rarer cases
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
                            self.conn.send(protocol.encode_authorize(AUTH_ID, token))
                        continue
                    if self.state is ShardState.AUTHORIZING:
                        if isinstance(message, Response) and message.id == AUTH_ID:
                            self._on_authorized(message, token)
                            assembler = self._request_sync()
                        continue
                    assert assembler is not None
                    self._dispatch(message, assembler, reached_live)
                if assembler is not None and not reached_live and assembler.check(self._clock()):
                    self._reconcile(assembler)
                    reached_live = True
                    self._failures = 0
                if self._flush_due():
                    self._flush()
        except (ConnectionLost, ProtocolError, SinkError, SyncRejected, MirrorError) as exc:
            raise self._classify(exc, reached_live) from None
        except SessionEnded as end:
            end.reached_live = end.reached_live or reached_live
            raise

    def _on_authorized(self, response: Response, token: str) -> None:
        if response.status == 401:
            self._rejected = fingerprint(token)
            self.token = None
            self._send(ipc.NeedToken(rejected=self._rejected))
            raise TokenRejected(f"token rejected by authorize: {response.error_text}")
        if not response.ok:
            raise SessionEnded(f"authorize failed with {response.status}: {response.error_text}")
        self.log.info("authorized")

    def _request_sync(self) -> SnapshotAssembler:
        assert self.conn is not None
        body = protocol.sync_request_body(
            divisor=self.options.divisor,
            remainder=self.remainder,
            expression=self.options.expression,  # type: ignore[arg-type]
            entity_types=self.options.entity_types,
            split_responses=self.options.split_responses,
        )
        self.conn.send(protocol.encode_request("user/syncrequest", SYNC_ID, "", body))
        self._set_state(ShardState.SYNCING)
        return SnapshotAssembler(SYNC_ID, split=self.options.split_responses, quiet=self._quiet)

    def _dispatch(self, message: object, assembler: SnapshotAssembler, reconciled: bool) -> None:
        assert self.mirror is not None
        if isinstance(message, Response):
            if message.id != SYNC_ID:
                self.log.debug("unexpected_response", id=message.id, status=message.status)
            elif not assembler.complete:
                assembler.on_response(message, self._clock())
            else:
                self._late_part(message)
        elif isinstance(message, PropsEvent | SystemEvent):
            # Not "assembler.complete": props read in the same pass as the
            # completing part must wait for the reconciliation, or the snapshot
            # (older than they are) would undo them.
            if reconciled:
                self._apply(message)
            else:
                assembler.on_event(message)
        elif isinstance(message, ShutdownEvent):
            backoff = self.options.quota_backoff if message.quota else None
            reason = f"server shutdown: {message.reason_code} {message.reason or ''}".strip()
            raise SessionEnded(reason, backoff=backoff)
        elif isinstance(message, CloseFrame):
            raise SessionEnded(f"server closed the session: {message.code} {message.reason or ''}".strip())

    def _late_part(self, response: Response) -> None:
        """A same-id part after the quiet rule declared the snapshot complete: resync, waiting longer.

        Merging it is not safe: it holds snapshot-time state, possibly older than
        live props applied since (an entity deleted meanwhile would come back).
        The reconciliation already emitted was against a partial snapshot; the
        resync corrects it.  The quiet period doubles (up to 30 s) so a slow
        server's snapshot completes on the next attempt.
        """
        if not response.ok:
            raise SyncRejected(response.status, response.error_text)
        if protocol.is_snapshot_end(response.data):
            return
        self._quiet = min(2 * self._quiet, MAX_QUIET)
        self.log.warning("late_snapshot_part", quiet=self._quiet)
        raise SessionEnded(f"late snapshot part: resync with a {self._quiet:g} s quiet period", backoff=0.0)

    def _apply(self, event: PropsEvent | SystemEvent) -> None:
        assert self.mirror is not None
        now = self._received_at
        if isinstance(event, SystemEvent):
            self._add([self.mirror.system(event.name, event.data, received_at=now)])
            self.log.info("system_event", name=event.name)
            return
        try:
            changes = self.mirror.diff_event(event.entity_type, event.event_type, event.entities, received_at=now)
        except MirrorError as exc:
            # Kept as a system record so nothing is lost, and loudly.
            self.log.warning("unusable_event_kept", error=str(exc), entity_type=event.entity_type)
            payload = {"entityType": event.entity_type, "eventType": event.event_type, "entity": list(event.entities)}
            self._add([self.mirror.system("props", payload, received_at=now)])
            return
        self.events += 1
        if changes:
            self._add(changes)

    def _reconcile(self, assembler: SnapshotAssembler) -> None:
        assert self.mirror is not None
        self._set_busy(max(10.0, len(assembler.entities) / 20_000))
        # The snapshot is the whole truth for the shard: whatever the server sent
        # is kept (live props are not filtered either), whatever it did not is gone.
        changes = self.mirror.diff_snapshot(assembler.entities, types=None, received_at=self._now_iso())
        self._add(changes)
        for event in assembler.buffered:
            self._apply(event)
        self._flush()
        self._set_state(ShardState.LIVE)
        self.log.info(
            "live",
            parts=assembler.parts,
            entities=len(self.mirror),
            changes=len(changes),
            buffered=len(assembler.buffered),
        )

    def _add(self, changes: list[Change]) -> None:
        if changes and not self._pending:
            self._pending_since = self._clock()
        self._pending += changes

    def _flush_due(self) -> bool:
        """Commit now, or keep reading to make a bigger batch?

        A commit costs about as much as hundreds of changes, so under load the
        batch grows while more frames are waiting, up to ``batch_max`` changes
        or ``flush_interval`` seconds of age; when the socket is quiet, the
        changes are committed at once.
        """
        if not self._pending:
            return False
        if len(self._pending) >= self.options.batch_max or self.conn is None:
            return True
        if self._clock() - self._pending_since >= self.options.flush_interval:
            return True
        return not (self.conn.buffered() or self._poll(0.0))

    def _flush(self) -> None:
        if not self._pending:
            return
        assert self.sink is not None and self.mirror is not None
        batch, self._pending = self._pending, []
        try:
            self.sink.write(batch)
        except SinkError:
            self.mirror.rollback()
            raise
        self.mirror.commit()

    def _classify(self, exc: Exception, reached_live: bool) -> SessionEnded:
        if isinstance(exc, ProtocolError):
            self.log.warning("protocol_error", error=str(exc), excerpt=exc.excerpt)
            return SessionEnded(f"protocol error: {exc}", reached_live=reached_live)
        if isinstance(exc, SinkError):
            self.log.error("sink_error", error=str(exc))
            return SessionEnded(f"sink error: {exc}", reached_live=reached_live)
        if isinstance(exc, SyncRejected):
            backoff = self.options.quota_backoff if exc.status == 429 else None
            return SessionEnded(str(exc), backoff=backoff, reached_live=reached_live)
        return SessionEnded(str(exc), reached_live=reached_live)

    # --- receiving -------------------------------------------------------------------

    def _receive(self, assembler: SnapshotAssembler | None) -> list[Any]:
        """Wait for the next deadline or input; return the decoded messages read meanwhile.

        Once the socket is readable, every frame already read ahead is taken
        in the same pass (up to ``batch_max`` changes pending, or until the
        next deadline), so sink writes are batched under load and immediate
        when traffic is light.  A close or an undecodable frame ends the list
        (as a Closed or a ProtocolError item), so the messages before it are
        still handled.
        """
        assert self.conn is not None
        messages: list[Any] = []
        deadline = self._tick(assembler)
        if not (self.conn.buffered() or self._poll(max(0.0, deadline - self._clock()))):
            return messages
        self._received_at = self._now_iso()
        # One timeout for the whole pass: it bounds the wait for the rest of a
        # frame, and an unchanged value costs no setsockopt.
        timeout = max(0.001, deadline - self._clock())
        conn, clock, decode = self.conn, self._clock, protocol.decode_frame
        room = self.options.batch_max - len(self._pending)
        frames = 0
        while True:
            frame = conn.recv(timeout)
            if frame is None:
                break
            frames += 1
            if isinstance(frame, Closed):
                # Whatever came before the close (a shutdown event, say) is handled first.
                messages.append(frame)
                break
            try:
                decoded = decode(frame)
            except ProtocolError as exc:
                messages.append(exc)
                break
            if type(decoded) is MessagesFrame:
                messages += decoded.messages
            else:
                messages.append(decoded)
            if len(messages) >= room or not conn.buffered() or clock() >= deadline:
                break
        self.frames += frames
        if frames:
            self.last_frame_at = clock()
        return messages

    def _poll(self, timeout: float) -> bool:
        """Select on the socket and the inbox; True when the socket is readable."""
        ws_ready = False
        for key, _ in self._selector.select(timeout):
            if key.data == "ws":
                ws_ready = True
            else:
                self._on_input(key)
        return ws_ready

    def _tick(self, assembler: SnapshotAssembler | None) -> float:
        """Run what is due (client ``[]``, heartbeat, idle check); return the next deadline."""
        now = self._clock()
        if self.conn is not None:
            if now >= self._next_ping:
                self.conn.send(protocol.HEARTBEAT)
                self._next_ping = now + protocol.HEARTBEAT_INTERVAL
            assert self.last_frame_at is not None
            if now - self.last_frame_at >= self.options.idle_timeout:
                raise SessionEnded(f"no frame for {self.options.idle_timeout:g} s")
        if now >= self._next_beat:
            self._beat()
        deadlines = [self._next_beat]
        if self.conn is not None and self.last_frame_at is not None:
            deadlines += [self._next_ping, self.last_frame_at + self.options.idle_timeout]
        if assembler is not None and (quiet := assembler.deadline()) is not None:
            deadlines.append(quiet)
        return min(deadlines)

    # --- waiting, inbox, heartbeats -------------------------------------------------------

    def _wait(self, until_time: float | None, *, state: ShardState, until: Callable[[], bool] | None = None) -> None:
        """Sleep in the selector until ``until_time`` or ``until()``, serving inbox and heartbeats."""
        self._set_state(state)
        while True:
            if until is not None and until():
                return
            now = self._clock()
            if until_time is not None and now >= until_time:
                return
            if now >= self._next_beat:
                self._beat()
            deadline = self._next_beat if until_time is None else min(self._next_beat, until_time)
            for key, _ in self._selector.select(max(0.0, deadline - now)):
                if key.data != "ws":
                    self._on_input(key)

    def _on_input(self, key: selectors.SelectorKey) -> None:
        if key.data == "wake":
            with contextlib.suppress(BlockingIOError):
                os.read(key.fd, 512)
            self.log.info("stopping", signal="SIGTERM")
            raise Stopping
        self._read_inbox()

    def _read_inbox(self) -> None:
        try:
            messages = self._inbox.read()
        except ipc.IPCError as exc:
            self.log.error("inbox_corrupt", error=str(exc))
            raise Stopping from None
        for message in messages:
            if isinstance(message, ipc.Token):
                if fingerprint(message.value) != self._rejected:
                    self.token = message.value
            elif isinstance(message, ipc.Permit):
                self._permit = True
            elif isinstance(message, ipc.Stop):
                self._stopping = True
        if self._stopping or self._inbox.eof:
            self.log.info("stopping", parent_gone=self._inbox.eof and not self._stopping)
            raise Stopping

    def _beat(self, busy_for: float = 0.0) -> None:
        now = self._clock()
        self._next_beat = now + self.options.heartbeat_interval
        age = None if self.last_frame_at is None or self.conn is None else round(now - self.last_frame_at, 3)
        alive = self._send(
            ipc.Heartbeat(
                state=self.state,
                connected_since=self.connected_since if self.conn is not None else None,
                last_frame_age=age,
                frames=self.frames,
                events=self.events,
                entities=len(self.mirror) if self.mirror is not None else 0,
                reconnects=self.reconnects,
                last_error=self.last_error,
                busy_for=busy_for,
            )
        )
        if not alive:
            raise Stopping

    def _set_state(self, state: ShardState, *, busy_for: float = 0.0) -> None:
        """Change state and tell the parent at once (permits and status follow states)."""
        if state != self.state or busy_for:
            self.state = state
            self._beat(busy_for=busy_for)

    def _set_busy(self, seconds: float) -> None:
        """Tell the parent the next step may block this long (handshake, large commit)."""
        self._beat(busy_for=seconds)

    def _fail(self, event: str, error: str) -> None:
        self.last_error = error
        self.log.error(event, error=error)

    # --- teardown --------------------------------------------------------------------------

    def _close_connection(self, *, clean: bool) -> None:
        conn, self.conn = self.conn, None
        self.connected_since = None
        if conn is None:
            return
        # By fd: websocket-client forgets its socket object once it is shut down.
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._ws_fd)
        if clean:
            conn.close(timeout=1.0)
        else:
            conn.abort()

    def _shutdown(self) -> None:
        self.state = ShardState.STOPPING
        try:
            if self.mirror is not None and self.sink is not None:
                self._flush()
        except SinkError as exc:
            # Unflushed live changes are healed by the next start's resync.
            self.log.error("final_flush_failed", error=str(exc))
        self._close_connection(clean=True)
        if self.sink is not None:
            self.sink.close()
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
