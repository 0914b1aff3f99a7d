"""One API budget for every shard of this host: throttle pauses, parked configuration errors, evictions (pure).

Tradovate limits the API *user*, not a socket: a WebSocket 429 or a quota
shutdown on one shard means every shard's next handshake adds to the same
lock-out, which further requests extend (a rolling hour).  And a request the
server refuses as such (a syncrequest 400 for an entity type it rejects, an
authorize refused other than by 401) fails the same way on every retry, on
every shard.  So the parent, which hands out every connect permit, decides
here whether a shard may make its next handshake.  Nothing here reads a
clock, logs or touches a process; the loop passes ``now`` in (monotonic) and
carries out what it gets back.

Rules:

1. **Pause.**  :meth:`Budget.throttled` (a worker's ``Throttled``: ``ws429``
   or ``quota``; a REST 423/429 on login or renewal: ``rest429``) pauses every
   shard's new handshakes for ``lockout_backoff``; ``captcha`` for
   ``captcha_backoff``.  Another one during a pause extends it to ``now`` +
   its backoff (never shortens it).  Live sockets are untouched.
2. **Park.**  :meth:`Budget.rejected` counts a shard's refusals in a row with
   the same endpoint and status (a *signature*).  At :data:`PARK_AFTER` the
   shard is parked: no permit until an operator acts
   (:meth:`Budget.operator_acted`, a SIGHUP) or, failing that, one retry per
   ``lockout_backoff``.  Sixteen shards must not each spend three requests on
   one configuration error, so for each signature the first :data:`SPREAD`
   shards refused with it *lead*: the others refused the same way are held
   (no permit, not yet parked) while the leaders try again; once
   :data:`SPREAD` shards are parked for a signature, every other shard refused
   with it parks at once, held or at its first refusal.  Parked shards of one
   signature retry one at a time: a retry's permit moves the others' retry a
   ``lockout_backoff`` away.  A shard that gets live again clears its count
   and frees every shard held or parked for the signature it had.
3. **Eviction.**  ``authorize`` refused (not 401) by 2+ shards within
   :data:`EVICTION_WINDOW`, or :data:`EVICTION_STREAK` times in a row by one,
   while the current token had been accepted before, means the session was
   evicted by a newer login: :class:`Relogin` (once per token; the refusal
   counts of authorize are reset so the new token gets its fair attempts).
   A token no shard was ever authorized with is not evicted but refused:
   that parks, as rule 2 says.  An eviction (found here or by the token
   keeper's renewals) also ends a ``quota`` pause: the evicted session's
   sockets were shut with ConnectionQuotaReached, no rate limit of the server.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Final

from shardsync.supervisor.shardkey import ShardKey

__all__ = [
    "EVICTION_STREAK",
    "EVICTION_WINDOW",
    "PARK_AFTER",
    "SPREAD",
    "Budget",
    "Decision",
    "Park",
    "Relogin",
    "ShardBudget",
]

#: Refusals in a row (same endpoint and status) that park a shard.
PARK_AFTER: Final = 3
#: Shards parked for one refusal after which the others park at their first.
SPREAD: Final = 2
#: authorize refusals from this many shards within EVICTION_WINDOW seconds suggest an evicted session.
EVICTION_SHARDS: Final = 2
EVICTION_WINDOW: Final = 60.0
#: ... or this many in a row from one shard.
EVICTION_STREAK: Final = 3

AUTHORIZE: Final = "authorize"
#: "Held until something changes" (a follower waits for its leaders).
INF: Final = float("inf")


@dataclass(frozen=True, slots=True)
class Park:
    """Park ``key``: no permit before ``until`` (or a reload); ``reason`` has the server's text."""

    key: ShardKey
    until: float
    reason: str


@dataclass(frozen=True, slots=True)
class Relogin:
    """The session looks evicted: log in again (the token keeper's cap still applies)."""

    why: str


Decision = Park | Relogin


@dataclass(frozen=True, slots=True)
class ShardBudget:
    """One shard's part of the budget, for /status and metrics."""

    parked: bool = False
    parked_reason: str | None = None
    parked_until: float | None = None
    rejections: int = 0


@dataclass
class _Shard:
    signature: tuple[str, int] | None = None
    streak: int = 0
    total: int = 0
    #: When this run of refusals began: leaders of a signature are its earliest.
    since: float = 0.0
    parked_until: float | None = None
    parked_reason: str | None = None

    def clear(self) -> None:
        self.signature, self.streak, self.parked_until, self.parked_reason = None, 0, None, None


class Budget:
    """Pauses, parks and eviction verdicts for the shards of one parent."""

    def __init__(self, *, lockout_backoff: float, captcha_backoff: float) -> None:
        self.reconfigure(lockout_backoff=lockout_backoff, captcha_backoff=captcha_backoff)
        self._pause_until: float | None = None
        self._pause_reason: str | None = None
        self._pause_text = ""
        self._shards: dict[ShardKey, _Shard] = {}
        self._authorize_refusals: deque[tuple[float, ShardKey]] = deque()
        self._token_worked = False
        self._relogin_asked = False
        #: Throttles by reason since start (a metric).
        self.throttles: Counter[str] = Counter()

    def reconfigure(self, *, lockout_backoff: float, captcha_backoff: float) -> None:
        """New backoffs (a reload); pauses and parks already decided keep their times."""
        if lockout_backoff <= 0 or captcha_backoff <= 0:
            raise ValueError("invalid backoffs")
        self.lockout_backoff = lockout_backoff
        self.captcha_backoff = captcha_backoff

    # -- rule 1: pauses ----------------------------------------------------------------------

    def throttled(self, reason: str, endpoint: str, text: str, now: float) -> float:
        """The server said slow down (``reason``: ws429, quota, captcha, rest429): returns when the pause ends."""
        backoff = self.captcha_backoff if reason == "captcha" else self.lockout_backoff
        until = now + backoff
        current = self.paused_until(now)
        if current is None or until >= current:
            self._pause_until = until
            self._pause_reason, self._pause_text = reason, f"{endpoint}: {text}" if text else endpoint
        self.throttles[reason] += 1
        assert self._pause_until is not None
        return self._pause_until

    def evicted(self) -> bool:
        """Our session was evicted: a pause for a quota shutdown was that eviction (its sockets were shut for
        it), not the server's rate limit, so it ends now.  True when a pause was lifted."""
        if self._pause_until is None or self._pause_reason != "quota":
            return False
        self._pause_until = self._pause_reason = None
        self._pause_text = ""
        return True

    def paused_until(self, now: float) -> float | None:
        """When the current pause ends (None: not paused)."""
        return self._pause_until if self._pause_until is not None and self._pause_until > now else None

    # -- permits ---------------------------------------------------------------------------------

    def hold_until(self, key: ShardKey, now: float) -> float | None:
        """Until when ``key`` gets no connect permit (None: it may have one now; inf: until a change)."""
        times = [t for t in (self.paused_until(now), self._own_hold(key, now)) if t is not None and t > now]
        return max(times) if times else None

    def _own_hold(self, key: ShardKey, now: float) -> float | None:
        shard = self._shards.get(key)
        if shard is None or shard.signature is None:
            return None
        if shard.parked_until is not None:
            return shard.parked_until
        if key not in self._leaders(shard.signature):
            return INF  # a follower: the leaders find out for it
        return None

    def granted(self, key: ShardKey, now: float) -> None:
        """``key`` got a permit: a parked shard's retry, the only one of its signature this lockout_backoff."""
        shard = self._shards.get(key)
        if shard is None or shard.parked_until is None:
            return
        later = now + self.lockout_backoff
        for other in self._shards.values():
            if other.signature == shard.signature and other.parked_until is not None:
                other.parked_until = max(other.parked_until, later)

    # -- rule 2 (and 3): refusals --------------------------------------------------------------

    def rejected(self, key: ShardKey, endpoint: str, status: int, text: str, now: float) -> list[Decision]:
        """The server refused ``key``'s ``endpoint`` with ``status``: park it, log in again, or nothing yet."""
        shard = self._shards.setdefault(key, _Shard())
        signature = (endpoint, status)
        shard.total += 1
        if shard.signature == signature:
            shard.streak += 1
        else:
            shard.signature, shard.streak, shard.since = signature, 1, now
            shard.parked_until = shard.parked_reason = None
        if endpoint == AUTHORIZE:
            relogin = self._eviction(key, shard, now)
            if relogin is not None:
                return [relogin]
        if shard.parked_until is not None:  # a retry, refused again
            shard.parked_until = now + self.lockout_backoff
            return [Park(key, shard.parked_until, shard.parked_reason or "")]
        parked = self._parked_with(signature)
        if shard.streak < PARK_AFTER and len(parked) < SPREAD:
            return []
        how = f"{shard.streak} in a row" if shard.streak >= PARK_AFTER else f"as {len(parked)} other shards are"
        decisions: list[Decision] = [self._park(key, shard, text, how, now)]
        if len(parked) + 1 >= SPREAD:
            # The leaders have found out: every shard held back for the same refusal parks now.
            for other_key, other in sorted(self._shards.items()):
                if other.signature == signature and other.parked_until is None:
                    decisions.append(self._park(other_key, other, text, f"as {SPREAD} shards are", now))
        return decisions

    def _park(self, key: ShardKey, shard: _Shard, text: str, how: str, now: float) -> Park:
        assert shard.signature is not None
        endpoint, status = shard.signature
        shard.parked_until = now + self.lockout_backoff
        shard.parked_reason = (f"{endpoint} refused with {status} ({how}): {text}; a configuration error? "
                               f"parked until a reload, retried every {self.lockout_backoff:g} s")
        return Park(key, shard.parked_until, shard.parked_reason)

    def _parked_with(self, signature: tuple[str, int]) -> list[ShardKey]:
        return [r for r, s in self._shards.items() if s.signature == signature and s.parked_until is not None]

    def _leaders(self, signature: tuple[str, int]) -> list[ShardKey]:
        """The SPREAD shards refused with ``signature`` first (parked ones included: they found out)."""
        refused = sorted((s.since, r) for r, s in self._shards.items() if s.signature == signature)
        return [r for _, r in refused[:SPREAD]]

    def _eviction(self, key: ShardKey, shard: _Shard, now: float) -> Relogin | None:
        refusals = self._authorize_refusals
        refusals.append((now, key))
        while refusals and now - refusals[0][0] >= EVICTION_WINDOW:
            refusals.popleft()
        shards = {r for _, r in refusals}
        if len(shards) < EVICTION_SHARDS and shard.streak < EVICTION_STREAK:
            return None
        if not self._token_worked or self._relogin_asked:
            return None  # a token never accepted is refused, not evicted (and one login per token)
        self._relogin_asked = True
        refusals.clear()
        for other in self._shards.values():
            if other.signature is not None and other.signature[0] == AUTHORIZE:
                other.clear()
        what = (f"{len(shards)} shards within {EVICTION_WINDOW:g} s" if len(shards) >= EVICTION_SHARDS
                else f"{EVICTION_STREAK} times in a row")
        return Relogin(f"authorize refused (not 401) by {what}, with a token that worked: evicted session?")

    def progressed(self, key: ShardKey, live: bool) -> None:
        """A heartbeat of ``key``; ``live``: its session works, so what refused it is gone."""
        shard = self._shards.get(key)
        if not live or shard is None or shard.signature is None:
            return
        signature = shard.signature
        for other in self._shards.values():
            if other.signature == signature:
                other.clear()  # held or parked alike: they start over (refused again, they find out fast)

    def authorized(self) -> None:
        """A shard got past authorize with the current token."""
        self._token_worked = True

    def token_changed(self) -> None:
        """A new token went out: it has worked nowhere yet, and may be evicted once."""
        self._token_worked = False
        self._relogin_asked = False

    def operator_acted(self) -> None:
        """A reload: every park and hold is lifted, every count starts over (pauses are the server's: they stay)."""
        for shard in self._shards.values():
            shard.clear()
        self._authorize_refusals.clear()

    def forget(self, key: ShardKey) -> None:
        """The shard left the table (a reload removed it)."""
        self._shards.pop(key, None)

    # -- queries --------------------------------------------------------------------------------

    def parked(self, key: ShardKey) -> bool:
        shard = self._shards.get(key)
        return shard is not None and shard.parked_until is not None

    def shard(self, key: ShardKey) -> ShardBudget:
        shard = self._shards.get(key)
        if shard is None:
            return ShardBudget()
        return ShardBudget(parked=shard.parked_until is not None, parked_reason=shard.parked_reason,
                           parked_until=shard.parked_until, rejections=shard.total)

    def next_change(self, now: float) -> float | None:
        """The nearest time a pause ends or a parked shard may retry."""
        times = [t for t in (self.paused_until(now), *(s.parked_until for s in self._shards.values()))
                 if t is not None and t > now]
        return min(times, default=None)

    def status(self, now: float) -> dict[str, Any]:
        """For /status: the pause (state ``paused`` or ``ok``), its reason, seconds left and the server's text."""
        until = self.paused_until(now)
        return {
            "state": "ok" if until is None else "paused",
            "reason": None if until is None else self._pause_reason,
            "until_in": None if until is None else round(until - now, 3),
            "text": None if until is None else self._pause_text,
            "throttles": dict(self.throttles),
            "parked": sorted(r for r, s in self._shards.items() if s.parked_until is not None),
        }
