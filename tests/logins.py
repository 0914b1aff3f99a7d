"""A blocking login for tests and benchmarks (the daemon never blocks on HTTP: it forks a helper)."""

from __future__ import annotations

import time
from collections.abc import Callable

from shardsync.auth import Captcha, Failed, Grant, Locked, Refused, Ticket, request_token
from shardsync.credentials import Credentials


class AuthError(Exception):
    """Login failed for a reason retrying soon will not fix (errorText, captcha, lock-out)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


def login(
    rest_url: str,
    credentials: Credentials,
    *,
    app_id: str,
    app_version: str,
    cid: int,
    device_id: str,
    timeout: float = 10.0,
    lockout_backoff: float = 3600.0,
    captcha_backoff: float = 3600.0,
    max_penalties: int = 3,
    sleep: Callable[[float], None] = time.sleep,
) -> Grant:
    """Log in, blocking: waits out up to ``max_penalties`` p-ticket penalties; raises :class:`AuthError` otherwise.

    For the demo, benchmarks and tests; the daemon's parent uses the keeper and one-shot calls instead.
    """
    ticket: str | None = None
    for _ in range(max_penalties + 1):
        outcome = request_token(rest_url, credentials, app_id=app_id, app_version=app_version, cid=cid,
                                device_id=device_id, ticket=ticket, timeout=timeout)
        match outcome:
            case Grant():
                return outcome
            case Ticket(next_ticket, wait):
                sleep(wait)
                ticket = next_ticket
            case Captcha():
                raise AuthError(f"login needs a captcha (p-captcha); no attempt for {captcha_backoff:g} s",
                                retry_after=captcha_backoff)
            case Locked(status):
                raise AuthError(f"login rate-limited (HTTP {status}); no attempt for {lockout_backoff:g} s",
                                retry_after=lockout_backoff)
            case Refused(text):
                raise AuthError(f"login refused: {text}")
            case Failed(reason):
                raise AuthError(f"login failed: {reason}", retry_after=5.0)
            case _:
                raise AuthError(f"login failed: unexpected outcome {type(outcome).__name__}", retry_after=30.0)
    raise AuthError("login kept getting time penalties", retry_after=60.0)
