"""The parent's handle on one shard: its worker process, pipes, deadlines and last heartbeat."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
from dataclasses import dataclass, field
from typing import Literal

from shardsync import ipc
from shardsync.ipc import ShardState
from shardsync.worker.options import WorkerOptions

#: What the parent does once the current worker is reaped.
Then = Literal["policy", "restart", "remove"]


@dataclass(eq=False)
class Shard:
    """One remainder.  At most one worker process exists for it at any time."""

    remainder: int
    options: WorkerOptions
    key: object
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
    stop_requested: bool = False
    kill_at: float | None = None
    hung: bool = False
    ever_live: bool = False
    then: Then = "policy"
    last_error: str | None = None
    events_per_s: float = 0.0
    _rate_mark: tuple[float, int] | None = field(default=None, repr=False)

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

    def on_beat(self, beat: ipc.Heartbeat, now: float) -> None:
        self.beat = beat
        self.last_beat = now
        if beat.state is ShardState.LIVE:
            self.ever_live = True
        if beat.last_error:
            self.last_error = beat.last_error
        # events/s over at least one second, so bursts of state-change beats
        # don't make the rate jitter.
        if self._rate_mark is None or beat.events < self._rate_mark[1]:
            self._rate_mark = (now, beat.events)
        elif now - self._rate_mark[0] >= 1.0:
            self.events_per_s = (beat.events - self._rate_mark[1]) / (now - self._rate_mark[0])
            self._rate_mark = (now, beat.events)

    def tell(self, message: ipc.Message) -> bool:
        """Send to the worker without ever blocking the parent (a stopped worker's pipe may be full)."""
        if self.inbox_w is None:
            return False
        return ipc.send(self.inbox_w, message, block=False)

    def signal(self, sig: int) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

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


def _unregister(selector: selectors.BaseSelector, fd: int) -> None:
    with contextlib.suppress(KeyError, ValueError):
        selector.unregister(fd)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
