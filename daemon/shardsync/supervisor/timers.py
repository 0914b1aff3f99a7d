"""Every deadline of the parent's loop, one small object each, in one list.

A :class:`Timer` says when it next has work (:meth:`Timer.next_at`) and does
it (:meth:`Timer.run_due`).  :class:`TimerList` is the only caller: it runs a
timer exactly when its ``next_at`` has come, and the loop's select timeout is
the nearest ``next_at`` of the same list.  So what a timer waits for and what
it does are one definition, and a deadline can never be slept through
because the timeout forgot it.

The timers carry out decisions made elsewhere (hang verdicts, readiness,
the restart policy, the token keeper, the permit gate); they only say when.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from shardsync.supervisor import hang, readiness

if TYPE_CHECKING:
    from shardsync.config import Settings
    from shardsync.supervisor.httpd import StatusServer
    from shardsync.supervisor.login import Login
    from shardsync.supervisor.notify import Notifier
    from shardsync.supervisor.readiness import Ready
    from shardsync.supervisor.resharding import Resharding
    from shardsync.supervisor.retirer import Retirer
    from shardsync.supervisor.shard import Shard
    from shardsync.supervisor.table import ShardTable


class Loop(Protocol):
    """What the timers see of the arbiter (a Protocol, so this module does not import the arbiter)."""

    settings: Settings
    stopping: bool
    ready: bool
    started: float
    table: ShardTable
    login: Login
    retirer: Retirer
    resharding: Resharding | None

    @property
    def status_server(self) -> StatusServer | None: ...

    @property
    def shards(self) -> dict[int, Shard]: ...

    def become_ready(self, ready: Ready) -> None: ...

    def advance_reshard(self, now: float) -> None: ...

__all__ = [
    "SPAWNS_PER_PASS",
    "LoginDeadline",
    "LoginDue",
    "PermitGrants",
    "Readiness",
    "ReshardDue",
    "RestartsDue",
    "RetireDue",
    "StatusExpiry",
    "Timer",
    "TimerList",
    "Watchdog",
    "WorkerDeadlines",
]

#: At most this many workers are forked per pass of the loop, so that starting
#: many shards (64 at boot, or a reload adding many) never stalls the status
#: endpoint, heartbeats and the watchdog for long: children compete for the CPU
#: from their first instant and make every further fork slower.
SPAWNS_PER_PASS = 4


class Timer(Protocol):
    """One concern of the loop with a deadline."""

    def next_at(self, now: float) -> float | None:
        """When this timer next has work (<= now: due now; None: nothing pending)."""

    def run_due(self, now: float) -> None:
        """Do the work that is due at ``now`` (called only when ``next_at(now) <= now``)."""


class TimerList:
    """The loop's timers, run in order; also the source of the loop's select timeout."""

    def __init__(self, timers: Sequence[Timer]) -> None:
        self.timers = tuple(timers)

    def run_due(self, now: float, longest: float) -> float:
        """Run every timer that is due at ``now``; return the select timeout (at most ``longest``)."""
        nearest = now + longest
        ran = False
        for timer in self.timers:
            at = timer.next_at(now)
            if at is None:
                continue
            if at <= now:
                timer.run_due(now)
                ran = True
            elif at < nearest:
                nearest = at
        # Running one timer may move another's deadline: then ask every timer again.
        return self.timeout(now, longest) if ran else nearest - now

    def timeout(self, now: float, longest: float) -> float:
        """Seconds until the nearest ``next_at``, at most ``longest`` (0 when something is due)."""
        nearest = now + longest
        for timer in self.timers:
            at = timer.next_at(now)
            if at is not None and at < nearest:
                nearest = at
        return max(0.0, nearest - now)


def _start_at(shard: Shard) -> float | None:
    return None if shard.running else shard.next_start_at


class RestartsDue:
    """Fork the workers whose (re)start time has come, a few per pass."""

    def __init__(self, arbiter: Loop) -> None:
        self.arbiter = arbiter

    def next_at(self, now: float) -> float | None:
        if self.arbiter.stopping:
            return None
        return min((at for s in self.arbiter.table.shards.values() if (at := _start_at(s)) is not None), default=None)

    def run_due(self, now: float) -> None:
        due = [s for s in self.arbiter.table.shards.values() if (at := _start_at(s)) is not None and at <= now]
        # The rest stay due: the loop's next select has a zero timeout and comes back here.
        for shard in due[:SPAWNS_PER_PASS]:
            self.arbiter.table.spawn(shard)


class WorkerDeadlines:
    """Heartbeat deadlines (a silent worker is hung) and kill deadlines (a stop's grace ran out)."""

    def __init__(self, arbiter: Loop) -> None:
        self.arbiter = arbiter

    def next_at(self, now: float) -> float | None:
        limits = self.arbiter.table.limits
        ats = (hang.next_check(s, limits) for s in self.arbiter.table.shards.values() if s.running)
        return min((at for at in ats if at is not None), default=None)

    def run_due(self, now: float) -> None:
        limits = self.arbiter.table.limits
        for shard in list(self.arbiter.table.shards.values()):
            if shard.running and (verdict := hang.verdict(shard, limits, now)) is not None:
                self.arbiter.table.carry_out(shard, verdict)


class PermitGrants:
    """Hand out connect permits as the gate allows."""

    def __init__(self, arbiter: Loop) -> None:
        self.arbiter = arbiter

    def next_at(self, now: float) -> float | None:
        return None if self.arbiter.stopping else self.arbiter.table.next_permit_at(now)

    def run_due(self, now: float) -> None:
        self.arbiter.table.grant_permits(now)


class LoginDue:
    """Start the login or renewal the token keeper has scheduled."""

    def __init__(self, arbiter: Loop) -> None:
        self.arbiter = arbiter

    def next_at(self, now: float) -> float | None:
        return None if self.arbiter.stopping else self.arbiter.login.next_call_at(now)

    def run_due(self, now: float) -> None:
        self.arbiter.login.start_call(now)


class LoginDeadline:
    """Kill a login helper that runs past its deadline."""

    def __init__(self, arbiter: Loop) -> None:
        self.arbiter = arbiter

    def next_at(self, now: float) -> float | None:
        call = self.arbiter.login.call
        return None if call is None else call.deadline

    def run_due(self, now: float) -> None:
        self.arbiter.login.kill_slow_helper(now)


class Watchdog:
    """WATCHDOG=1 to systemd at half of WATCHDOG_USEC, from the loop (so a wedged loop misses it)."""

    def __init__(self, notifier: Notifier, now: float) -> None:
        self.notifier = notifier
        self.interval = notifier.watchdog_interval
        self.next: float | None = now if self.interval else None

    def next_at(self, now: float) -> float | None:
        return self.next

    def run_due(self, now: float) -> None:
        self.notifier.watchdog()
        assert self.interval is not None
        self.next = now + self.interval


class Readiness:
    """READY=1 once every shard was live, or at the start timeout (``readiness.py`` decides)."""

    def __init__(self, arbiter: Loop) -> None:
        self.arbiter = arbiter

    def _args(self) -> tuple[float, float, bool]:
        arb = self.arbiter
        return arb.started, arb.settings.supervisor.start_timeout, arb.table.all_live()

    def next_at(self, now: float) -> float | None:
        if self.arbiter.ready or self.arbiter.stopping:
            return None
        started, timeout, all_live = self._args()
        return readiness.due_at(started=started, start_timeout=timeout, all_live=all_live)

    def run_due(self, now: float) -> None:
        started, timeout, all_live = self._args()
        ready = readiness.decide(now=now, started=started, start_timeout=timeout, all_live=all_live)
        if ready is not None:
            self.arbiter.become_ready(ready)


class StatusExpiry:
    """Drop slow status clients and resume a paused listener."""

    def __init__(self, arbiter: Loop) -> None:
        self.arbiter = arbiter

    def next_at(self, now: float) -> float | None:
        server = self.arbiter.status_server
        return None if server is None else server.next_deadline()

    def run_due(self, now: float) -> None:
        if self.arbiter.status_server is not None:
            self.arbiter.status_server.expire(now)



class RetireDue:
    """Retire stale shards once every current shard is live; kill a retire helper past its deadline."""

    def __init__(self, arbiter: Loop) -> None:
        self.arbiter = arbiter

    def next_at(self, now: float) -> float | None:
        arb = self.arbiter
        call = arb.retirer.call
        if call is not None:
            return call.deadline
        if arb.stopping:
            return None
        if arb.retirer.ready or (arb.retirer.pending and arb.table.all_live_now()):
            return now
        return None

    def run_due(self, now: float) -> None:
        arb = self.arbiter
        if arb.retirer.call is not None:
            arb.retirer.kill_slow()
        else:
            arb.retirer.start(arb.settings, now, gated=arb.table.all_live_now())


class ReshardDue:
    """Carry a resharding forward whenever its current move can go on (a new shard live or failed)."""

    def __init__(self, arbiter: Loop) -> None:
        self.arbiter = arbiter

    def next_at(self, now: float) -> float | None:
        arb = self.arbiter
        if arb.stopping or arb.resharding is None or not arb.resharding.due(arb.table):
            return None
        return now

    def run_due(self, now: float) -> None:
        self.arbiter.advance_reshard(now)
