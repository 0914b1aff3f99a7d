"""The parent's handle on one shard: its worker process, pipes, deadlines and last heartbeat.

A :class:`Shard` owns everything about its worker's lifetime: :meth:`Shard.start`
makes the pipes, forks (through the injected :class:`Processes`), watches the
pipe and pidfd in the loop's selector; :meth:`Shard.detach` closes it all
again after the reap.  The arbiter only decides when.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from shardsync import ipc
from shardsync.ipc import ShardState
from shardsync.supervisor.processes import Launch, Processes
from shardsync.supervisor.reload import Row, Then
from shardsync.supervisor.shardkey import ShardKey
from shardsync.supervisor.status import ShardStatus
from shardsync.supervisor.tally import Tally
from shardsync.worker.options import WorkerOptions

#: A selector key's handler: called with the ready mask.
Handler = Callable[[int], None]
#: Bytes a worker's pipe may owe it at most (frames it could not take yet); beyond, tell() refuses.
OUTGOING_MAX = 256 * 1024


@dataclass(eq=False)
class Shard:
    """One remainder.  At most one worker process exists for it at any time."""

    remainder: int
    options: WorkerOptions
    procs: Processes = field(default_factory=Processes, repr=False)
    pid: int | None = None
    pidfd: int | None = None
    inbox_w: int | None = None
    outbox: ipc.Reader | None = None
    started_at: float = 0.0
    started_wall: float = 0.0
    last_beat: float | None = None
    beat: ipc.Heartbeat | None = None
    #: The parent's view when no worker speaks for the shard: starting,
    #: backoff (waiting to restart), parked, stopping, exited.
    phase: ShardState = ShardState.STARTING
    restarts: int = 0
    next_start_at: float | None = None
    parked: bool = False
    #: Why the restart policy parked it (shown in /status while parked).
    parked_reason: str | None = None
    stop_requested: bool = False
    kill_at: float | None = None
    hung: bool = False
    ever_live: bool = False
    then: Then = Then.POLICY
    last_error: str | None = None
    events_per_s: float = 0.0
    # For /metrics, kept across this shard's workers: counters, and the latest wall-clock times
    # any worker reported (ages are counted from ``taken_wall``, when the parent took the shard on,
    # until one does).
    tally: Tally = field(default_factory=Tally, repr=False)
    taken_wall: float = 0.0
    last_event_at: float | None = None
    last_commit_at: float | None = None
    snapshot_seconds: float | None = None
    _rate_mark: tuple[float, int] | None = field(default=None, repr=False)
    #: Frames for the worker that its pipe could not take yet, in order (see tell()).
    _outgoing: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def key(self) -> ShardKey:
        return ShardKey(self.options.divisor, self.remainder)

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def state(self) -> ShardState:
        """The worker's own state while it runs and speaks, else the parent's phase."""
        if self.pid is not None and self.beat is not None and not self.stop_requested and not self.hung:
            return self.beat.state
        if self.hung:
            return ShardState.HUNG
        return self.phase

    def start(self, *, now: float, wall: float, parent_pid: int, selector: selectors.BaseSelector,
              on_output: Handler, on_exit: Handler) -> int:
        """Fork this shard's worker (the old one, if any, is already reaped) and watch it; returns its pid."""
        assert self.pid is None, "never two workers for one remainder"
        inbox_r, inbox_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = self.procs.fork_worker(Launch(self.options, self.remainder, parent_pid, inbox_r, out_w))
        except BaseException:
            _close(inbox_w)
            _close(out_r)
            raise
        finally:
            # The child's ends: its copies are all it needs.
            _close(inbox_r)
            _close(out_w)
        os.set_blocking(out_r, False)
        os.set_blocking(inbox_w, False)
        self.pid = pid
        self.tally.next_worker()
        self.inbox_w = inbox_w
        self.outbox = ipc.Reader(out_r)
        self.started_at = now
        self.started_wall = wall
        self.phase = ShardState.STARTING
        self.next_start_at = None
        self.parked = False
        self.parked_reason = None
        self.then = Then.POLICY
        selector.register(out_r, selectors.EVENT_READ, on_output)
        try:
            self.pidfd = self.procs.pidfd_open(pid)
            selector.register(self.pidfd, selectors.EVENT_READ, on_exit)
        except OSError:
            self.pidfd = None  # old kernel: SIGCHLD still wakes the loop
        return pid

    def row(self) -> Row:
        """This shard as the reload planner sees it."""
        return Row(self.options, running=self.running, then=self.then)

    # --- what the hang verdict watches (hang.Watched), read on every pass of the loop ---

    @property
    def started(self) -> float:
        return self.started_at

    @property
    def busy_for(self) -> float:
        return self.beat.busy_for if self.beat is not None else 0.0

    @property
    def stopping(self) -> bool:
        return self.stop_requested or self.hung

    def status(self, now: float, wall: float) -> ShardStatus:
        """This shard's line of /status at ``now`` (the loop's clock) and ``wall`` (epoch seconds)."""
        beat = self.beat
        return ShardStatus(
            remainder=self.remainder,
            divisor=self.options.divisor,
            state=self.state,
            pid=self.pid,
            uptime=round(now - self.started_at, 3) if self.running else None,
            restarts=self.restarts,
            parked=self.parked,
            parked_reason=self.parked_reason if self.parked else None,
            last_heartbeat_age=None if self.last_beat is None else round(now - self.last_beat, 3),
            events_per_s=round(self.events_per_s, 1),
            events=beat.events if beat else 0,
            entities=beat.entities if beat else 0,
            reconnects=beat.reconnects if beat else 0,
            last_error=self.last_error,
            next_restart_in=None if self.running or self.next_start_at is None
            else round(max(0.0, self.next_start_at - now), 3),
            rss_bytes=beat.rss_bytes if beat else 0,
            open_fds=beat.open_fds if beat else 0,
            last_event_age=_age(wall, self.last_event_at, self.taken_wall),
            last_commit_age=_age(wall, self.last_commit_at, self.taken_wall),
            snapshot_seconds=self.snapshot_seconds,
            counts=self.tally.total,
            sink_down_for=self._sink_down_for(wall),
        )

    def _sink_down_for(self, wall: float) -> float | None:
        """How long the current worker has not reached its sink (its exit clears its beat)."""
        beat = self.beat
        if beat is None or beat.sink_down_at is None:
            return None
        return round(max(0.0, wall - beat.sink_down_at), 3)

    def on_beat(self, beat: ipc.Heartbeat, now: float) -> None:
        self.beat = beat
        self.last_beat = now
        if beat.state is ShardState.LIVE:
            self.ever_live = True
        if beat.last_error:
            self.last_error = beat.last_error
        self.tally.beat(beat)
        self.last_event_at = _latest(self.last_event_at, beat.last_event_at)
        self.last_commit_at = _latest(self.last_commit_at, beat.last_commit_at)
        if beat.snapshot_seconds is not None:
            self.snapshot_seconds = beat.snapshot_seconds
        # events/s over at least one second, so bursts of state-change beats
        # don't make the rate jitter.
        if self._rate_mark is None or beat.events < self._rate_mark[1]:
            self._rate_mark = (now, beat.events)
        elif now - self._rate_mark[0] >= 1.0:
            self.events_per_s = (beat.events - self._rate_mark[1]) / (now - self._rate_mark[0])
            self._rate_mark = (now, beat.events)

    def tell(self, message: ipc.Message) -> bool:
        """Send to the worker without ever blocking the parent (a stopped worker's pipe may be full).

        A frame larger than PIPE_BUF (an 8 KiB token) may go only partly into
        a nearly full pipe: the rest waits here and goes first at the next
        :meth:`flush` (the table flushes whenever the worker speaks), so
        every frame arrives whole and in order.  False when the worker is
        gone or already owes more than OUTGOING_MAX bytes (nothing queued).
        """
        if self.inbox_w is None:
            return False
        frame = ipc.encode(message)
        if len(self._outgoing) + len(frame) > OUTGOING_MAX:
            return False
        self._outgoing += frame
        self.flush()
        return True

    def flush(self) -> None:
        """Write what the worker's pipe takes now of the queued frames, never blocking."""
        if self.inbox_w is None:
            return
        try:
            while self._outgoing:
                written = os.write(self.inbox_w, self._outgoing)
                del self._outgoing[:written]
        except BlockingIOError:
            pass
        except (BrokenPipeError, ConnectionResetError):
            self._outgoing.clear()

    def signal(self, sig: int) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.procs.kill(self.pid, sig)

    def detach(self, selector: selectors.BaseSelector) -> list[ipc.Message]:
        """After the worker is reaped: drain its last messages, close every fd, forget the pid."""
        messages: list[ipc.Message] = []
        if self.outbox is not None:
            with contextlib.suppress(ipc.IPCError, OSError):
                messages = self.outbox.read()
            _unregister(selector, self.outbox.fd)
            _close(self.outbox.fd)
        if self.pidfd is not None:
            _unregister(selector, self.pidfd)
            _close(self.pidfd)
        if self.inbox_w is not None:
            _close(self.inbox_w)
        self.pid = self.pidfd = self.inbox_w = None
        self.outbox = None
        self.beat = None
        self.last_beat = None
        self.kill_at = None
        self.hung = False
        self.stop_requested = False
        self._rate_mark = None
        self.events_per_s = 0.0
        self._outgoing.clear()
        return messages

    def request_stop(self, now: float, grace: float) -> None:
        """Ask the worker to stop cleanly; SIGKILL follows after ``grace`` seconds."""
        if self.pid is None:
            return
        self.stop_requested = True
        self.phase = ShardState.STOPPING
        self.tell(ipc.Stop())
        self.signal(signal.SIGTERM)
        deadline = now + grace
        self.kill_at = deadline if self.kill_at is None else min(self.kill_at, deadline)


def _latest(known: float | None, reported: float | None) -> float | None:
    return known if reported is None or (known is not None and known >= reported) else reported


def _age(wall: float, at: float | None, since: float) -> float:
    # A wall clock stepped back gives 0, not a negative age.
    return round(max(0.0, wall - (since if at is None else at)), 3)


def _unregister(selector: selectors.BaseSelector, fd: int) -> None:
    with contextlib.suppress(KeyError, ValueError):
        selector.unregister(fd)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
