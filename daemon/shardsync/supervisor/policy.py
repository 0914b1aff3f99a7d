"""The parent's restart policy: pure decisions, carried out by the supervisor loop.

Nothing here reads a clock, sleeps, logs or touches a process.  The loop passes
monotonic ``now`` values in and acts on the returned decision (tenacity style),
so every rule is testable with exact times and a seeded ``random.Random``.

Rules, per shard (keyed by divisor and remainder):

1. **Immediate first restart.**  The first failure after a healthy spell is
   restarted at once (delay 0): a killed worker should be back in well under a
   second.  Attempt ``n >= 2`` waits ``Backoff(backoff_initial,
   backoff_max).delay(n - 1)``: capped exponential, equal jitter in
   ``[0.5, 1) x ceiling``, never above ``backoff_max``.
2. **Stable reset.**  If the worker ran ``>= stable_after`` seconds before this
   exit, the attempt counter restarts from 1, so the crash is again immediate.
3. **Intensity/period (OTP).**  Every failure exit is a timestamp in a sliding
   window of ``period`` seconds.  When a failure would make it more than
   ``intensity`` within the window, the shard is parked instead of restarted:
   ``Park(until=now + backoff_max)``; the loop starts it again at ``until``.
   A parked shard is on probation after that retry: crashing before
   ``stable_after`` parks it again at once (whatever the window holds, since a
   long ``backoff_max`` would otherwise let old timestamps age out and free a
   shard that never proved itself); running ``stable_after`` clears its history
   so it starts over.  A shard that was never parked keeps its window across
   stable runs, so a worker that dies just after ``stable_after`` still cannot
   restart faster than ``intensity`` per ``period``.
4. **Global breaker.**  A shard is *failing* while it is parked, on probation
   and not yet stable, or has ``>= 2`` failure exits within ``period``.  When
   the failing shards are more than half of the configured shards and at least
   2, the answer is ``Escalate``: stop everything and exit 3 so systemd's own
   backoff takes over.  Correlated failure (a server outage, revoked
   credentials) is not a per-shard problem; one shard crash-looping is, so a
   single-shard deployment and 1 of 16 looping never trip it -- they park.
5. **Deterministic.**  Decisions depend only on the ``now`` values passed in,
   the call order and the rng's seed.

Expected exits (the parent stopped the worker: shutdown, reload, removed shard)
are not failures and record nothing.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from shardsync.backoff import Backoff
from shardsync.supervisor.shardkey import ShardKey

if TYPE_CHECKING:
    from shardsync.config import SupervisorSettings

__all__ = [
    "Decision",
    "Escalate",
    "Park",
    "Restart",
    "RestartPolicy",
]


@dataclass(frozen=True)
class Restart:
    """Start the shard's worker again at ``at`` (``now + delay``)."""

    at: float
    delay: float
    attempt: int


@dataclass(frozen=True)
class Park:
    """Crash loop: leave the shard down and retry it once at ``until``."""

    until: float
    reason: str


@dataclass(frozen=True)
class Escalate:
    """Most shards are failing together: stop everything and exit 3."""

    reason: str


Decision: TypeAlias = Restart | Park | Escalate


@dataclass
class _Shard:
    started: float | None = None
    attempt: int = 0
    failures: deque[float] = field(default_factory=deque)
    parked_until: float | None = None
    probation: bool = False


class RestartPolicy:
    """Restart, park or escalate, for one parent supervising N shards."""

    def __init__(
        self,
        *,
        backoff_initial: float,
        backoff_max: float,
        stable_after: float,
        intensity: int,
        period: float,
        rng: random.Random,
    ) -> None:
        if stable_after <= 0 or intensity < 1 or period <= 0:
            raise ValueError(
                f"invalid restart policy: stable_after {stable_after}, intensity {intensity}, period {period}"
            )
        self._backoff = Backoff(backoff_initial, backoff_max, rng)
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.intensity = intensity
        self.period = period
        self._shards: dict[ShardKey, _Shard] = {}
        self._configured: set[ShardKey] = set()

    @classmethod
    def from_settings(cls, s: SupervisorSettings, rng: random.Random) -> RestartPolicy:
        return cls(
            backoff_initial=s.backoff_initial,
            backoff_max=s.backoff_max,
            stable_after=s.stable_after,
            intensity=s.intensity,
            period=s.period,
            rng=rng,
        )

    # -- events from the loop ----------------------------------------------------

    def on_start(self, key: ShardKey, now: float) -> None:
        """A worker for ``key`` was (re)started at ``now``."""
        shard = self._shard(key)
        if shard.parked_until is not None:
            shard.parked_until = None
            shard.probation = True
        shard.started = now

    def on_exit(self, key: ShardKey, now: float, *, expected: bool) -> Decision | None:
        """The worker for ``key`` exited at ``now``; ``None`` when we stopped it on purpose."""
        if expected:
            return None
        shard = self._shard(key)
        ran = now - shard.started if shard.started is not None else 0.0
        shard.started = None
        if ran >= self.stable_after:
            shard.attempt = 0
            if shard.probation:
                shard.probation = False
                shard.failures.clear()
        shard.attempt += 1
        shard.failures.append(now)
        self._prune(shard, now)

        decision: Decision
        if shard.probation:
            decision = self._park(
                shard, now, f"crashed {ran:.1f}s after its parked retry (stable_after {self.stable_after}s)"
            )
        elif len(shard.failures) > self.intensity:
            decision = self._park(
                shard, now, f"{len(shard.failures)} failures within {self.period}s (intensity {self.intensity})"
            )
        else:
            delay = 0.0 if shard.attempt == 1 else self._backoff.delay(shard.attempt - 1)
            decision = Restart(at=now + delay, delay=delay, attempt=shard.attempt)

        failing = self.failing(now)
        if self._tripped(len(failing)):
            return Escalate(
                f"{len(failing)} of {len(self._configured)} shards failing within {self.period}s: {sorted(failing)}"
            )
        return decision

    def forget(self, key: ShardKey) -> None:
        """The shard was removed by a reload: drop its history and stop counting it."""
        self._shards.pop(key, None)
        self._configured.discard(key)

    def set_shards(self, keys: Iterable[ShardKey]) -> None:
        """The configured shards: the breaker's denominator."""
        self._configured = set(keys)

    # -- queries for the loop and for status ----------------------------------

    def failing(self, now: float) -> set[ShardKey]:
        """Configured shards counted as failing by the breaker at ``now``."""
        out: set[ShardKey] = set()
        for key in self._configured:
            shard = self._shards.get(key)
            if shard is not None and self._is_failing(shard, now):
                out.add(key)
        return out

    def parked(self) -> set[ShardKey]:
        """Shards waiting out a ``Park`` (not running until their ``until``)."""
        return {r for r, shard in self._shards.items() if shard.parked_until is not None}

    # -- internals -------------------------------------------------------------

    def _shard(self, key: ShardKey) -> _Shard:
        # A shard the loop starts is configured, even if set_shards was never called.
        self._configured.add(key)
        return self._shards.setdefault(key, _Shard())

    def _prune(self, shard: _Shard, now: float) -> None:
        while shard.failures and not self._in_window(shard.failures[0], now):
            shard.failures.popleft()

    def _in_window(self, t: float, now: float) -> bool:
        # One expression for pruning and for counting, so boundaries never disagree.
        return now - t < self.period

    def _park(self, shard: _Shard, now: float, reason: str) -> Park:
        shard.parked_until = now + self.backoff_max
        return Park(until=shard.parked_until, reason=reason)

    def _is_failing(self, shard: _Shard, now: float) -> bool:
        if shard.parked_until is not None:
            return True
        if shard.probation and (shard.started is None or now - shard.started < self.stable_after):
            return True
        # Counted without pruning so the query stays side-effect free.
        return sum(1 for t in shard.failures if self._in_window(t, now)) >= 2

    def _tripped(self, failing: int) -> bool:
        return failing >= 2 and failing * 2 > len(self._configured)
