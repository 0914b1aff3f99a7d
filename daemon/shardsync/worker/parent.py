"""The worker's end of its link to the parent: inbox, heartbeats, state changes, stop.

The parent sends the token, connect permits and ``Stop`` down the inbox pipe;
the worker sends ``Hello``, heartbeats (its :class:`Vitals`), ``NeedToken``,
``NeedPermit``, and ``Rejected``/``Throttled`` (what the parent's one API
budget is built on) back.  Heartbeats go out from the session's own loop, so a
wedged loop looks dead to the parent, which is the point.  ``Stop``, the
parent's end of the pipe closing and SIGTERM (through the signal wakeup fd)
all end the worker the same way: :class:`Stopping`.
"""

from __future__ import annotations

import contextlib
import os
import selectors
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass, field
from typing import Any

from shardsync import ipc
from shardsync.ipc import ShardState
from shardsync.secrets import fingerprint


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


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Let SIGTERM abandon the blocking call inside (see :func:`on_terminate`)."""
    global _interruptible  # noqa: PLW0603 - read by the signal handler, which has no other way in
    _interruptible = True
    try:
        yield
    finally:
        _interruptible = False


@dataclass(slots=True)
class Vitals:
    """What a heartbeat tells the parent; the session's parts keep it current.

    ``connected_since`` and ``last_frame_at`` are None while no connection is open.
    """

    state: ShardState = ShardState.STARTING
    connected_since: float | None = None
    last_frame_at: float | None = None
    frames: int = 0
    events: int = 0
    reconnects: int = 0
    last_error: str | None = None
    #: The mirror once the sink is open; its size is the ``entities`` reported.
    mirror: Sized | None = None
    #: Wall clock of the last frame from the server and of the last committed batch.
    last_event_at: float | None = None
    last_commit_at: float | None = None
    #: Seconds from the syncrequest to live, of the last (re)sync.
    snapshot_seconds: float | None = None
    #: Committed batches by latency (cumulative per ``ipc.COMMIT_BUCKETS`` bound, then +Inf) and their sum.
    commits: list[int] = field(default_factory=lambda: [0] * (len(ipc.COMMIT_BUCKETS) + 1))
    commit_seconds: float = 0.0
    #: Entities refused as unstorable (kept in the change log as ``rejected``).
    quarantined: int = 0
    #: Sink writes that failed (each ends the session: the next one resyncs).
    sink_errors: int = 0
    #: Wall clock when the sink became unreachable; None while it is reachable.
    sink_down_at: float | None = None

    def committed(self, seconds: float, at: float) -> None:
        """A batch committed after ``seconds``, at wall-clock ``at``."""
        self.last_commit_at = at
        self.commit_seconds += seconds
        counts = self.commits
        for index, bound in enumerate(ipc.COMMIT_BUCKETS):
            if seconds <= bound:
                counts[index] += 1
        counts[-1] += 1


_PAGE = os.sysconf("SC_PAGE_SIZE")


def process_figures() -> tuple[int, float, int]:
    """This process's resident set (bytes), CPU seconds (user + system) and open descriptors, from /proc."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            rss = int(statm.read().split()[1]) * _PAGE
        fds = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError, IndexError):
        rss, fds = 0, 0
    times = os.times()
    return rss, round(times.user + times.system, 3), fds


class ParentLink:
    """Reads the inbox, keeps the token and permit it brings, and sends heartbeats on time.

    The inbox (and the wakeup fd, in a forked worker) are registered in the
    session's selector with a handler of this object as the key's data; the
    WebSocket's key carries None.
    """

    def __init__(
        self,
        inbox_fd: int,
        send: Callable[[ipc.Message], bool],
        selector: selectors.BaseSelector,
        *,
        vitals: Vitals,
        heartbeat_interval: float,
        permits: bool,
        clock: Callable[[], float],
        log: Any,
        wake_fd: int | None = None,
    ) -> None:
        self._inbox = ipc.Reader(inbox_fd)
        os.set_blocking(inbox_fd, False)
        self._send = send
        self._selector = selector
        self._vitals = vitals
        self._interval = heartbeat_interval
        self._permits = permits
        self._clock = clock
        self.log = log
        self._wake_fd = wake_fd
        selector.register(inbox_fd, selectors.EVENT_READ, self._read_inbox)
        if wake_fd is not None:
            selector.register(wake_fd, selectors.EVENT_READ, self._on_wake)
        self.token: str | None = None
        self._rejected: str | None = None
        self._permit = not permits
        self._stopping = False
        #: When the next heartbeat is due (the session's receive pass keeps this deadline too).
        self.next_beat = 0.0
        #: Called with the new state after every state change (the worker writes its freshness row).
        self.on_state: Callable[[ShardState], None] | None = None

    # --- what the worker says ------------------------------------------------------

    def hello(self, remainder: int) -> None:
        self._send(ipc.Hello(remainder=remainder, pid=os.getpid()))

    def beat(self, busy_for: float = 0.0) -> None:
        """Send a heartbeat now; ``busy_for`` announces a step that may block that long."""
        now = self._clock()
        self.next_beat = now + self._interval
        v = self._vitals
        rss, cpu, fds = process_figures()
        alive = self._send(
            ipc.Heartbeat(
                state=v.state,
                connected_since=v.connected_since,
                last_frame_age=None if v.last_frame_at is None else round(now - v.last_frame_at, 3),
                frames=v.frames,
                events=v.events,
                entities=0 if v.mirror is None else len(v.mirror),
                reconnects=v.reconnects,
                last_error=v.last_error,
                busy_for=busy_for,
                rss_bytes=rss,
                cpu_seconds=cpu,
                open_fds=fds,
                last_event_at=v.last_event_at,
                last_commit_at=v.last_commit_at,
                snapshot_seconds=v.snapshot_seconds,
                commits=tuple(v.commits),
                commit_seconds=round(v.commit_seconds, 6),
                quarantined=v.quarantined,
                unattributed=getattr(v.mirror, "unattributed", 0),
                sink_errors=v.sink_errors,
                sink_down_at=v.sink_down_at,
            )
        )
        if not alive:
            raise Stopping

    def set_state(self, state: ShardState, *, busy_for: float = 0.0) -> None:
        """Change state and tell the parent at once (permits and status follow states)."""
        changed = state != self._vitals.state
        if changed or busy_for:
            self._vitals.state = state
            self.beat(busy_for=busy_for)
        if changed and self.on_state is not None:
            self.on_state(state)

    def busy(self, seconds: float) -> None:
        """Tell the parent the next step may block this long (handshake, large commit)."""
        self.beat(busy_for=seconds)

    def rejected(self, endpoint: str, status: int, text: str) -> None:
        """The server refused ``endpoint`` in a way a new socket will not fix (the parent counts and parks)."""
        self._send(ipc.Rejected(endpoint=endpoint, status=status, text=text))

    def throttled(self, reason: str, endpoint: str, text: str) -> None:
        """The server asked the whole API user to slow down (the parent pauses every shard's handshakes)."""
        self._send(ipc.Throttled(reason=reason, endpoint=endpoint, text=text))

    def reject_token(self, token: str) -> None:
        """authorize refused ``token``: forget it, ignore it if handed out again, ask for another."""
        self._rejected = fingerprint(token)
        self.token = None
        self._send(ipc.NeedToken(rejected=self._rejected))

    # --- waiting for the parent ----------------------------------------------------------

    def await_token(self) -> str:
        while self.token is None:
            self.wait(None, state=ShardState.WAITING_TOKEN, until=lambda: self.token is not None)
        return self.token

    def take_permit(self) -> None:
        """Wait for a connect permit (when permits are on) and use it up: one permit, one connect."""
        if not self._permits:
            return
        if not self._permit:
            self._send(ipc.NeedPermit())
            self.wait(None, state=ShardState.WAITING_PERMIT, until=lambda: self._permit)
        self._permit = False

    def wait(self, until_time: float | None, *, state: ShardState, until: Callable[[], bool] | None = None) -> None:
        """Sleep in the selector until ``until_time`` or ``until()``, serving the inbox and heartbeats."""
        self.set_state(state)
        while True:
            if until is not None and until():
                return
            now = self._clock()
            if until_time is not None and now >= until_time:
                return
            if now >= self.next_beat:
                self.beat()
            deadline = self.next_beat if until_time is None else min(self.next_beat, until_time)
            for key, _ in self._selector.select(max(0.0, deadline - now)):
                if key.data is not None:
                    key.data()

    # --- input -----------------------------------------------------------------------------

    def _on_wake(self) -> None:
        # The signal wakeup fd of a forked worker: SIGTERM means stop cleanly.
        assert self._wake_fd is not None
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_fd, 512)
        self.log.info("stopping", signal="SIGTERM")
        raise Stopping

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
