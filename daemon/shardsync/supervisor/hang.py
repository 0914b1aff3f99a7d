"""Hang verdicts: when a silent worker counts as hung, and when a stopping one is killed (pure).

The loop shows one running worker as a :class:`Watched` and asks
:func:`next_check` when to look again and :func:`verdict` what to do now;
both read the same deadline, so the loop's timeout and its action never
disagree.  Clocks are passed in; nothing here signals a process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias

if TYPE_CHECKING:
    from shardsync.config import SupervisorSettings

__all__ = ["FIRST_BEAT_GRACE", "HANG_GRACE", "Hung", "Kill", "Limits", "Verdict", "Watch", "Watched",
           "heartbeat_deadline", "next_check", "verdict"]

#: Before its first heartbeat a worker gets this much longer than heartbeat_timeout
#: (imports, sink open, mirror preload).
FIRST_BEAT_GRACE = 10.0
#: A hung worker gets this long between SIGTERM and SIGKILL: its loop is wedged,
#: so a clean stop is unlikely and the shard is down meanwhile.
HANG_GRACE = 0.5


@dataclass(frozen=True, slots=True)
class Limits:
    """The heartbeat rules of the ``[supervisor]`` section."""

    interval: float
    timeout: float
    first_grace: float
    hang_grace: float

    @classmethod
    def from_settings(cls, sup: SupervisorSettings) -> Limits:
        return cls(
            interval=sup.heartbeat_interval,
            timeout=sup.heartbeat_timeout,
            first_grace=sup.heartbeat_timeout + FIRST_BEAT_GRACE,
            hang_grace=min(HANG_GRACE, sup.shutdown_timeout),
        )


class Watched(Protocol):
    """What the verdict looks at for one running worker (a :class:`Watch`, or the parent's shard itself).

    ``stopping``: the parent asked it to stop or already judged it hung, so no
    heartbeat deadline applies any more, only ``kill_at``.
    """

    @property
    def started(self) -> float: ...
    @property
    def last_beat(self) -> float | None: ...
    @property
    def busy_for(self) -> float: ...
    @property
    def kill_at(self) -> float | None: ...
    @property
    def stopping(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Watch:
    """A :class:`Watched` as plain data."""

    started: float
    last_beat: float | None
    busy_for: float
    kill_at: float | None
    stopping: bool


@dataclass(frozen=True, slots=True)
class Kill:
    """The stop grace ran out: SIGKILL now."""


@dataclass(frozen=True, slots=True)
class Hung:
    """No heartbeat in time: SIGTERM now, SIGKILL at ``kill_at``."""

    kill_at: float
    last_beat_age: float | None


Verdict: TypeAlias = Kill | Hung


def heartbeat_deadline(watch: Watched, limits: Limits) -> float:
    """When a worker with no further heartbeat counts as hung.

    Before the first beat the worker is still connecting, so it gets
    ``first_grace`` from its start.  After it, ``timeout`` from the last beat,
    stretched to ``busy_for + interval`` when the worker announced a blocking
    step (TLS handshake, big sink commit): a slow but progressing worker is not
    killed (uvicorn #2506), while a wedged loop still misses its deadline.
    """
    last_beat = watch.last_beat
    if last_beat is None:
        return watch.started + limits.first_grace
    return last_beat + max(limits.timeout, watch.busy_for + limits.interval)


def next_check(watch: Watched, limits: Limits) -> float | None:
    """When :func:`verdict` may next have something to say (None: only after a new event)."""
    if watch.kill_at is not None:
        return watch.kill_at
    if watch.stopping:
        return None
    return heartbeat_deadline(watch, limits)


def verdict(watch: Watched, limits: Limits, now: float) -> Verdict | None:
    """What to do with this worker at ``now``: kill it, judge it hung, or nothing yet."""
    at = next_check(watch, limits)
    if at is None or now < at:
        return None
    if watch.kill_at is not None:
        return Kill()
    age = None if watch.last_beat is None else now - watch.last_beat
    return Hung(kill_at=now + limits.hang_grace, last_beat_age=age)
