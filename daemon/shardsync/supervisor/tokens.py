"""The parent's token keeper: which REST call to make and when (pure: no I/O, no clock).

The supervisor loop asks :meth:`TokenKeeper.due` for the call to start now,
runs it in a forked child (:func:`shardsync.auth.request_token` or
:func:`shardsync.auth.renew_token`), and feeds the outcome back to
:meth:`TokenKeeper.finished`, which answers with an :data:`Event` for the loop
to act on (hand the token to the workers, log, exit). ``now`` is always
passed in (epoch seconds, the same clock as ``expirationTime``).

Rules:

* start: log in;
* a grant is renewed at ``expires_at - min(renew_before, lifetime / 2)``
  (lifetime as seen on arrival), so short test tokens renew at half-life;
* a transient renewal failure is retried on a capped, jittered exponential
  backoff while the token is valid; an expired token or a 401 means log in;
* p-ticket: log in again carrying the ticket once ``p-time`` has passed;
* p-captcha: nothing for ``captcha_backoff``; 423/429: nothing for
  ``lockout_backoff``;
* errorText before any login ever succeeded is :class:`Fatal` (wrong
  credentials: exit, do not loop); later it waits ``lockout_backoff``;
* a worker's 401 (:meth:`TokenKeeper.on_rejected`) on an older token is
  answered with the current one (:class:`Resend`); on the current token it
  triggers one renewal now, however many workers ask (:class:`Rejected`).

Never two calls in flight: :meth:`due` returns nothing between
:meth:`started` and :meth:`finished`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Final

from shardsync import backoff
from shardsync.auth import (
    Captcha,
    Failed,
    Grant,
    Locked,
    Outcome,
    Refused,
    Ticket,
    Unauthorized,
)
from shardsync.secrets import fingerprint, masked_repr

__all__ = [
    "Action",
    "Answer",
    "DoLogin",
    "DoRenew",
    "Event",
    "Fatal",
    "Nothing",
    "Rejected",
    "Resend",
    "TokenChanged",
    "TokenKeeper",
    "Wait",
]

#: "long ago": the first login is due at once
_AT_ONCE: Final = 0.0


# --- actions: what the loop should call ---------------------------------------------------


@masked_repr("ticket")
@dataclass(frozen=True, slots=True)
class DoLogin:
    """Call ``request_token`` (with ``ticket`` after a time penalty)."""

    ticket: str | None = None


@masked_repr("token")
@dataclass(frozen=True, slots=True)
class DoRenew:
    """Call ``renew_token`` with ``token``."""

    token: str


Action = DoLogin | DoRenew


# --- events: what the loop should do with an outcome ---------------------------------------


@masked_repr("token")
@dataclass(frozen=True, slots=True)
class TokenChanged:
    """A new token: hand it to every worker."""

    token: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Fatal:
    """Login can never succeed as configured (credentials refused at the first login): exit non-zero."""

    message: str


@dataclass(frozen=True, slots=True)
class Wait:
    """No call before ``until``; ``why`` is for the log (loud for captcha and lock-outs)."""

    until: float
    why: str


@dataclass(frozen=True, slots=True)
class Nothing:
    """Nothing for the loop to do (the next call is already scheduled)."""


Event = TokenChanged | Fatal | Wait | Nothing


# --- answers to a worker's 401 ---------------------------------------------------------------


@masked_repr("token")
@dataclass(frozen=True, slots=True)
class Resend:
    """The worker was refused an older token: hand it the current one."""

    token: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Rejected:
    """The current token (or none) was refused: a renewal is scheduled if Tradovate lets us make one."""


Answer = Resend | Rejected


# --- the keeper -------------------------------------------------------------------------------


class TokenKeeper:
    """Holds the one access token of the parent and schedules its login and renewals."""

    def __init__(
        self,
        *,
        renew_before: float,
        captcha_backoff: float,
        lockout_backoff: float,
        rng: random.Random,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
    ) -> None:
        self.renew_before = renew_before
        self.captcha_backoff = captcha_backoff
        self.lockout_backoff = lockout_backoff
        self._retry = backoff.Backoff(retry_initial, retry_max, rng)
        #: the current token (None before the first grant and after a 401)
        self.token: str | None = None
        self.expires_at: float | None = None
        self._plan: Action | None = DoLogin()
        self._plan_at: float = _AT_ONCE
        self._in_flight: Action | None = None
        self._failures = 0  # consecutive transient failures, for the backoff
        self._ever_granted = False
        self._urgent = False  # a worker's 401 already triggered a renewal of this token
        self._state = "logging_in"  # what we are waiting for: ok|penalty|captcha|locked|failed|fatal
        self._last_error: str | None = None
        self._margin = renew_before

    # -- queries -----------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str | None:
        """The current token's fingerprint (what workers report on a 401)."""
        return fingerprint(self.token) if self.token is not None else None

    def valid(self, now: float) -> bool:
        """A token is held and has not expired."""
        return self.token is not None and self.expires_at is not None and now < self.expires_at

    @property
    def renew_margin(self) -> float:
        """How long before its expiry the current token is renewed (``renew_before`` while none is held)."""
        return self._margin if self.token is not None else self.renew_before

    def due(self, now: float) -> Action | None:
        """The call to start now, if any (None while one is in flight or before its time)."""
        at = self.next_at()
        if self._plan is None or at is None or now < at:
            return None
        if isinstance(self._plan, DoRenew) and not self.valid(now):
            return DoLogin()  # too late to renew
        return self._plan

    def next_at(self) -> float | None:
        """When :meth:`due` will next return something (None: only after ``finished``, or never)."""
        if self._in_flight is not None or self._plan is None:
            return None
        if isinstance(self._plan, DoRenew) and self.expires_at is not None:
            return min(self._plan_at, self.expires_at)
        return self._plan_at

    def status(self, now: float) -> dict[str, Any]:
        """For /status: state, seconds until expiry and until the next attempt. Never the token."""
        if isinstance(self._in_flight, DoRenew):
            state = "renewing"
        elif isinstance(self._in_flight, DoLogin):
            state = "logging_in"
        elif self._state == "fatal":
            state = "failed"
        else:
            state = self._state
        next_at = self.next_at()
        return {
            "state": state,
            "expires_in": None if self.expires_at is None else round(self.expires_at - now, 3),
            "next_attempt_in": None if next_at is None else round(max(0.0, next_at - now), 3),
            "last_error": self._last_error,
        }

    # -- the loop's reports ----------------------------------------------------------------------
    def started(self, action: Action, now: float) -> None:
        """The loop started ``action`` (as returned by :meth:`due`)."""
        self._in_flight = action
        self._plan = None

    def finished(self, action: Action, outcome: Outcome, now: float) -> Event:
        """``action`` ended with ``outcome``: schedule the next call and tell the loop what to do."""
        self._in_flight = None
        login = isinstance(action, DoLogin)
        match outcome:
            case Grant(token, expires_at, _):
                return self._granted(token, expires_at, now)
            case Ticket(ticket, wait):
                until = now + max(0.0, wait)
                # a login penalty is resolved by resending with the ticket; a renewal just waits
                self._schedule(DoLogin(ticket) if login else action, until, "penalty")
                return Wait(until, f"time penalty (p-ticket) on {'login' if login else 'renewal'}: "
                                      f"retry in {wait:g} s")
            case Captcha():
                until = now + self.captcha_backoff
                self._schedule(DoLogin(), until, "captcha", "p-captcha")
                return Wait(until, f"Tradovate asks for a captcha (p-captcha), which a daemon cannot solve; "
                                      f"no login attempt for {self.captcha_backoff:g} s")
            case Locked(status):
                until = now + self.lockout_backoff
                retry: Action = action if not login and self.valid(until) else DoLogin()
                self._schedule(retry, until, "locked", f"HTTP {status}")
                return Wait(until, f"rate-limited by Tradovate (HTTP {status}); "
                                      f"no request for {self.lockout_backoff:g} s")
            case Refused(text) if login:
                if not self._ever_granted:
                    self._plan = None
                    self._state, self._last_error = "fatal", f"login refused: {text}"
                    return Fatal(f"login refused: {text}")
                until = now + self.lockout_backoff
                self._schedule(DoLogin(), until, "failed", f"login refused: {text}")
                return Wait(until, f"login refused: {text}; credentials changed? "
                                      f"no attempt for {self.lockout_backoff:g} s")
            case Unauthorized() | Refused() if not login:
                self.token = self.expires_at = None
                self._schedule(DoLogin(), now, "logging_in", "token expired or revoked")
                return Nothing()
            case Failed(reason):
                return self._failed(action, reason, now)
            case _:
                return self._failed(action, f"unexpected outcome {type(outcome).__name__}", now)

    def on_rejected(self, rejected_fingerprint: str, now: float) -> Answer:
        """A worker's authorize got 401 with the token of this fingerprint: what the loop tells it."""
        if self.token is not None and fingerprint(self.token) != rejected_fingerprint:
            return Resend(self.token, self.expires_at or 0.0)
        self.need_token(rejected_fingerprint, now)
        return Rejected()

    def need_token(self, rejected_fingerprint: str, now: float) -> None:
        """A worker's authorize got 401 with this token: renew now, once (an older token: ignore)."""
        if self.token is None or rejected_fingerprint != fingerprint(self.token) or self._urgent:
            return
        if self._in_flight is not None or self._state in ("penalty", "captcha", "locked", "fatal"):
            return  # a call is running, or Tradovate told us to wait: that wins
        self._urgent = True
        self._plan, self._plan_at = DoRenew(self.token), now

    # -- internals ---------------------------------------------------------------------------------
    def _schedule(self, action: Action, at: float, state: str, error: str | None = None) -> None:
        self._plan, self._plan_at, self._state = action, at, state
        if error is not None:
            self._last_error = error

    def _granted(self, token: str, expires_at: float, now: float) -> Event:
        self.token, self.expires_at = token, expires_at
        self._ever_granted = True
        self._urgent = False
        lifetime = expires_at - now
        if lifetime <= 0:
            # expired on arrival: our clock is ahead of Tradovate's; do not log in in a tight loop
            self._failures += 1
            until = now + self._retry.delay(self._failures)
            self._schedule(DoLogin(), until, "failed", "token expired on arrival (clock skew?)")
            return TokenChanged(token, expires_at)
        self._failures = 0
        self._last_error = None
        self._margin = min(self.renew_before, lifetime / 2)
        self._schedule(DoRenew(token), expires_at - self._margin, "ok")
        return TokenChanged(token, expires_at)

    def _failed(self, action: Action, reason: str, now: float) -> Event:
        self._failures += 1
        until = now + self._retry.delay(self._failures)
        if isinstance(action, DoRenew) and self.valid(now):
            what = "renewal"
            # the retry never waits past expiry: then it is a login (see due())
            self._schedule(action, until, "failed", f"renewal failed: {reason}")
        else:
            what = "login"
            retry = action if isinstance(action, DoLogin) else DoLogin()
            self._schedule(retry, until, "failed", f"login failed: {reason}")
        return Wait(until, f"token {what} failed ({reason}); retry in {until - now:.1f} s")
