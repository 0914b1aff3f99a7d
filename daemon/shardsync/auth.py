"""REST login against Tradovate: one access-token request, time penalties honoured.

This is the login the demo and the parent use; renewal scheduling, credential
sources and lock-out handling build on it.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from shardsync.protocol import ProtocolError, penalty_of


class AuthError(Exception):
    """Login failed for a reason retrying soon will not fix (errorText, captcha, lock-out)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Credentials:
    """Username, password and API secret; never printed."""

    username: str
    password: str
    secret: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***', secret='***')"


@dataclass(frozen=True, slots=True)
class Grant:
    """An access token and when it expires (epoch seconds)."""

    token: str
    expires_at: float
    user_id: int | None

    def __repr__(self) -> str:
        return f"Grant(token='***', expires_at={self.expires_at!r}, user_id={self.user_id!r})"


def parse_expiration(text: str) -> float:
    """``expirationTime`` (ISO-8601, usually with a trailing Z) as epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _request(url: str, body: bytes | None, headers: dict[str, str], timeout: float) -> tuple[int, Any]:
    # The scheme is http(s) only: config refuses anything else for rest_url.
    method = "POST" if body is not None else "GET"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - URL validated by config
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise AuthError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}", retry_after=5.0) from None
    if not raw:
        return status, None
    try:
        return status, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return status, None


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
    sleep: Callable[[float], None] = time.sleep,
) -> Grant:
    """``POST auth/accesstokenrequest``; waits out a p-ticket penalty and retries once with it."""
    body: dict[str, Any] = {
        "name": credentials.username,
        "password": credentials.password,
        "appId": app_id,
        "appVersion": app_version,
        "cid": cid,
        "sec": credentials.secret,
        "deviceId": device_id,
    }
    url = rest_url.rstrip("/") + "/auth/accesstokenrequest"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    for _ in range(3):
        status, data = _request(url, orjson.dumps(body), headers, timeout)
        if status in (423, 429):
            raise AuthError(f"login rate-limited (HTTP {status}); no attempt for {lockout_backoff:g} s",
                            retry_after=lockout_backoff)
        if status != 200 or not isinstance(data, dict):
            raise AuthError(f"login failed: HTTP {status}", retry_after=30.0)
        try:
            penalty = penalty_of(data)
        except ProtocolError as exc:
            raise AuthError(f"login failed: {exc}", retry_after=30.0) from None
        if penalty is not None:
            if penalty.captcha:
                raise AuthError(
                    f"login needs a captcha (p-captcha); no attempt for {captcha_backoff:g} s",
                    retry_after=captcha_backoff,
                )
            sleep(penalty.time)
            body["p-ticket"] = penalty.ticket
            continue
        if data.get("errorText"):
            raise AuthError(f"login refused: {data['errorText']}")
        token, expiry = data.get("accessToken"), data.get("expirationTime")
        if not isinstance(token, str) or not isinstance(expiry, str):
            raise AuthError("login response has no accessToken/expirationTime", retry_after=30.0)
        user_id = data.get("userId")
        return Grant(token, parse_expiration(expiry), user_id if isinstance(user_id, int) else None)
    raise AuthError("login kept getting time penalties", retry_after=60.0)
