"""The failed-login cap: at most MAX_FAILED_LOGINS failed logins in any rolling LOGIN_WINDOW (pure).

Tradovate locks an API user for an hour after 3 failed logins within an
hour; the parent stays one short of that.  A login counts as failed when
Tradovate answered it and did not grant a usable token: refused
(``errorText``), ``p-captcha``, 423/429, another HTTP error, or a grant the
keeper cannot use.  A login that reached no server (DNS, connect, TLS,
timeout: :class:`shardsync.auth.Failed` without a status) is not counted, so a
network outage at start-up does not cost an hour.  A time penalty (p-ticket)
is an instruction, not a failure.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from shardsync.auth import Captcha, Failed, Locked, Outcome, Refused

__all__ = ["CAPPED", "LOGIN_WINDOW", "MAX_FAILED_LOGINS", "LoginCap", "counts_as_failed_login"]

MAX_FAILED_LOGINS: Final = 2
LOGIN_WINDOW: Final = 3600.0
#: What the status and the log say while the cap holds a login back.
CAPPED: Final = (
    f"{MAX_FAILED_LOGINS} failed logins within {LOGIN_WINDOW:g} s: no login until the oldest of them is "
    f"{LOGIN_WINDOW:g} s old (Tradovate locks the user for an hour after 3)"
)


def counts_as_failed_login(outcome: Outcome) -> bool:
    """A login Tradovate answered and did not grant."""
    if isinstance(outcome, Refused | Captcha | Locked):
        return True
    return isinstance(outcome, Failed) and outcome.status is not None


class LoginCap:
    """The wall times of the latest counted failures; when the next login may start."""

    def __init__(self) -> None:
        # Only the last MAX_FAILED_LOGINS matter: the oldest of them sets the next allowed time.
        self._failures: deque[float] = deque(maxlen=MAX_FAILED_LOGINS)

    def record(self, now: float) -> None:
        """A login failed at ``now``."""
        self._failures.append(now)

    def allowed_at(self) -> float:
        """The earliest wall time a login may start (0: at once)."""
        if len(self._failures) < MAX_FAILED_LOGINS:
            return 0.0
        return self._failures[0] + LOGIN_WINDOW

    def recent(self, now: float) -> int:
        """Counted failures within the last LOGIN_WINDOW seconds."""
        return sum(1 for t in self._failures if now - t < LOGIN_WINDOW)
