"""Connect permits: at most N handshakes at once, spaced, so reconnect storms stay gentle (pure).

A worker asks before every (re)connect.  Its permit counts as in flight until
the worker reports that its handshake is over (any state past
``authorizing``), exits, or ``hold_max`` seconds pass, whichever is first;
the last bound keeps a lost report from shrinking the pool forever.

A ``hold`` callable (the API budget, ``budget.py``) may hold a waiting shard
back until a time: it keeps its place in the queue and is skipped meanwhile.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, TypedDict

from shardsync.ipc import ShardState
from shardsync.supervisor.shardkey import ShardKey

if TYPE_CHECKING:
    from shardsync.config import Settings

HANDSHAKE_STATES = frozenset({ShardState.CONNECTING, ShardState.AUTHORIZING})
#: States that do not end a granted permit: the handshake itself, and "waiting_permit"
#: from a heartbeat the worker sent before the permit reached it (still in the pipe
#: when the parent granted); a worker that really asks again calls request().
HOLDING_STATES = HANDSHAKE_STATES | {ShardState.WAITING_PERMIT}
#: Until when a waiting shard is held back (None: not held; inf: until something changes).
Hold = Callable[[ShardKey], float | None]
INF = float("inf")


class PermitGate:
    """FIFO of waiting shards; grants at most ``max_concurrent`` at once, ``spacing`` apart."""

    def __init__(self, *, max_concurrent: int, spacing: float, hold_max: float) -> None:
        self.reconfigure(max_concurrent=max_concurrent, spacing=spacing, hold_max=hold_max)
        self._waiting: OrderedDict[ShardKey, float] = OrderedDict()
        self._in_flight: dict[ShardKey, float] = {}
        self._last_grant = float("-inf")
        self.peak = 0
        #: Permits handed out since start (each one is a handshake: authorize, syncrequest).
        self.granted = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> PermitGate:
        """The gate of ``[supervisor]``; a permit is held at most two handshake timeouts."""
        return cls(**_limits(settings))

    def reconfigure_from(self, settings: Settings) -> None:
        """:meth:`reconfigure` with the limits of ``settings``."""
        self.reconfigure(**_limits(settings))

    def reconfigure(self, *, max_concurrent: int, spacing: float, hold_max: float) -> None:
        """New limits (a reload); who waits and who holds is kept, since a worker asks only once."""
        if max_concurrent < 1 or spacing < 0 or hold_max <= 0:
            raise ValueError("invalid permit limits")
        self.max_concurrent = max_concurrent
        self.spacing = spacing
        self.hold_max = hold_max

    def request(self, key: ShardKey, now: float) -> None:
        # A worker asks once per connect; asking again while holding one means
        # its previous handshake ended without a report.
        self._in_flight.pop(key, None)
        self._waiting.setdefault(key, now)

    def report(self, key: ShardKey, state: str) -> None:
        """A heartbeat arrived: a permit holder past its handshake frees its slot."""
        if state not in HOLDING_STATES:
            self._in_flight.pop(key, None)

    def forget(self, key: ShardKey) -> None:
        """The worker exited: it neither waits nor holds."""
        self._waiting.pop(key, None)
        self._in_flight.pop(key, None)

    def _expire(self, now: float) -> None:
        for key, granted in list(self._in_flight.items()):
            if now - granted >= self.hold_max:
                del self._in_flight[key]

    def grant(self, now: float, hold: Hold | None = None) -> list[ShardKey]:
        """The shards to hand a permit to now, first come first served among those not held."""
        self._expire(now)
        granted: list[ShardKey] = []
        for key in list(self._waiting):
            if len(self._in_flight) >= self.max_concurrent or now - self._last_grant < self.spacing:
                break
            until = None if hold is None else hold(key)
            if until is not None and until > now:
                continue
            del self._waiting[key]
            self._in_flight[key] = now
            self._last_grant = now
            granted.append(key)
        self.peak = max(self.peak, len(self._in_flight))
        self.granted += len(granted)
        return granted

    def next_at(self, now: float, hold: Hold | None = None) -> float | None:
        """When ``grant`` may next hand out something (None: nothing to wait for)."""
        times: list[float] = [granted + self.hold_max for granted in self._in_flight.values()]
        if self._waiting and len(self._in_flight) < self.max_concurrent:
            ready = max(now, self._last_grant + self.spacing)
            helds = (None if hold is None else hold(r) for r in self._waiting)
            # Held "until a change" (inf) has no time: the change itself comes with a message.
            eligible = [ready if until is None else max(ready, until) for until in helds if until != INF]
            if eligible:
                times.append(min(eligible))
        return min(times) if times else None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def waiting(self) -> int:
        return len(self._waiting)


def _limits(settings: Settings) -> _Limits:
    return {
        "max_concurrent": settings.supervisor.max_concurrent_connects,
        "spacing": settings.supervisor.connect_spacing,
        "hold_max": 2 * settings.tradovate.handshake_timeout,
    }


class _Limits(TypedDict):
    max_concurrent: int
    spacing: float
    hold_max: float
