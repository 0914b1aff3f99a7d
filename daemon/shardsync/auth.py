"""REST authentication against Tradovate: one-shot blocking calls that return outcomes.

:func:`request_token` (``POST auth/accesstokenrequest``) and :func:`renew_token`
(``GET auth/renewaccesstoken``) each make exactly **one** HTTP request and
classify the answer as an :data:`Outcome`; they never sleep and never retry.
The supervisor runs them in a short-lived forked child and gets the outcome
back over a pipe (:mod:`shardsync.supervisor.authcall`); the pure
:class:`shardsync.supervisor.tokens.TokenKeeper` decides what to call next and
when.

Secrets (password, API secret, tokens) are registered with
:func:`shardsync.secrets.register_secret` as soon as they are known here, and
never appear in exception text or in a ``repr``.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from shardsync.clip import clip
from shardsync.config.values import is_loopback
from shardsync.credentials import Credentials
from shardsync.protocol import ProtocolError, excerpt, penalty_of
from shardsync.secrets import masked_repr, register_secret
from shardsync.tls import client_context

__all__ = [
    "Captcha",
    "Failed",
    "Grant",
    "Locked",
    "Outcome",
    "Refused",
    "Ticket",
    "Unauthorized",
    "parse_expiration",
    "renew_token",
    "request_token",
]

#: a token answer is a few hundred bytes; anything far larger is not Tradovate
MAX_BODY: Final = 1 << 20
LOCKOUT_STATUSES: Final = frozenset({423, 429})


# --- outcomes -------------------------------------------------------------------------


@masked_repr("token")
@dataclass(frozen=True, slots=True)
class Grant:
    """An access token and when it expires (epoch seconds)."""

    token: str
    expires_at: float
    user_id: int | None = None


@masked_repr("ticket")
@dataclass(frozen=True, slots=True)
class Ticket:
    """A time penalty (p-ticket): resend the same request carrying ``ticket`` after ``wait`` seconds."""

    ticket: str
    wait: float


@dataclass(frozen=True, slots=True)
class Captcha:
    """p-captcha: a third-party app cannot solve it; no login attempt for ``captcha_backoff``."""


@dataclass(frozen=True, slots=True)
class Locked:
    """HTTP 423 (lock-out imminent) or 429 (locked out): no request for ``lockout_backoff``."""

    status: int


@dataclass(frozen=True, slots=True)
class Refused:
    """A business-level reject (``errorText``, e.g. wrong password): retrying will not help."""

    text: str


@dataclass(frozen=True, slots=True)
class Unauthorized:
    """Renewal answered 401 (or 400/errorText): the token is expired or revoked; log in again."""


@dataclass(frozen=True, slots=True)
class Failed:
    """A transient failure: network error, timeout, 5xx, unexpected status or body.

    ``status`` is the HTTP status when the server answered (an unusable 200
    body included), None when no answer came at all (DNS, connect, TLS,
    timeout): the token keeper counts only answered logins as failed logins,
    and reads 408/5xx on renewal as a sign of an evicted session.
    """

    reason: str
    status: int | None = None


Outcome = Grant | Ticket | Captcha | Locked | Refused | Unauthorized | Failed


def parse_expiration(text: str) -> float:
    """``expirationTime`` (ISO-8601, usually with a trailing Z) as epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- HTTP -------------------------------------------------------------------------------


class _Unreachable(Exception):
    """No HTTP answer at all (DNS, connect, TLS, timeout, a broken response), or a redirect (never followed)."""


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx stays an answer: credentials and tokens go only to the configured host and scheme."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme != "http" or not is_loopback(parts.hostname or ""):
        raise ValueError("the REST URL must be https:// (plain http:// only to a loopback host)")


def _opener(url: str, ca_file: str) -> urllib.request.OpenerDirector:
    """urllib's handlers with redirects refused; https verified against the system CAs plus ``ca_file``."""
    handlers: list[urllib.request.BaseHandler] = [_RefuseRedirects()]
    if url.startswith("https"):
        try:
            context = client_context(ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise _Unreachable(f"ca_file {ca_file!r} is not a usable PEM CA bundle: {exc}") from None
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def _redirect_reason(status: int, location: str | None) -> str:
    """Why a 3xx failed the call: its status and the Location's host only (a Location may carry anything)."""
    try:
        host = urlsplit((location or "").strip()).hostname
    except ValueError:
        host = None
    target = excerpt(host, 100) if host else "(the same host)" if location else "(no Location)"
    return f"HTTP {status} redirect to {target} refused (redirects are never followed)"


def _http(
    url: str, *, body: bytes | None, headers: dict[str, str], timeout: float, ca_file: str = ""
) -> tuple[int, bytes]:
    """One request, never redirected; the status and the raw body (also of an HTTP error status)."""
    _check_url(url)
    method = "POST" if body is not None else "GET"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310 - checked above
    try:
        with _opener(url, ca_file).open(request, timeout=timeout) as response:
            status, raw = int(response.status), response.read(MAX_BODY + 1)
    except urllib.error.HTTPError as exc:
        status = exc.code
        if 300 <= status < 400:
            exc.close()
            raise _Unreachable(_redirect_reason(status, exc.headers.get("Location"))) from None
        try:
            raw = exc.read(MAX_BODY + 1)
        except (OSError, http.client.HTTPException):
            raw = b""
    except urllib.error.URLError as exc:
        raise _Unreachable(str(exc.reason)) from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Unreachable(f"{type(exc).__name__}: {exc}") from None
    return status, raw


def _json_object(raw: bytes) -> dict[str, Any] | str:
    """The body as a JSON object, or why it is not one."""
    if len(raw) > MAX_BODY:
        return "response body too large"
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "response is not JSON"
    return data if isinstance(data, dict) else "response is not a JSON object"


def _grant_of(data: dict[str, Any]) -> Grant | Failed:
    token, expiry, user_id = data.get("accessToken"), data.get("expirationTime"), data.get("userId")
    if not isinstance(token, str) or not token or not isinstance(expiry, str):
        return Failed("response has no accessToken/expirationTime", 200)
    register_secret(token)
    md_token = data.get("mdAccessToken")
    if isinstance(md_token, str):
        register_secret(md_token)
    try:
        expires_at = parse_expiration(expiry)
    except ValueError:
        return Failed("expirationTime is not an ISO-8601 timestamp", 200)
    uid = user_id if isinstance(user_id, int) and not isinstance(user_id, bool) else None
    return Grant(token, expires_at, uid)


def _penalty_outcome(data: dict[str, Any]) -> Ticket | Captcha | Failed | None:
    try:
        penalty = penalty_of(data)
    except ProtocolError:
        return Failed("malformed time penalty (p-ticket/p-time)", 200)
    if penalty is None:
        return None
    if penalty.captcha:
        return Captcha()
    return Ticket(penalty.ticket, max(0.0, penalty.time))


def _endpoint(rest_url: str, path: str) -> str:
    return rest_url.rstrip("/") + path


_JSON_HEADERS: Final = {"Content-Type": "application/json", "Accept": "application/json"}


def request_token(
    rest_url: str,
    credentials: Credentials,
    *,
    app_id: str,
    app_version: str,
    cid: int,
    device_id: str,
    ticket: str | None = None,
    timeout: float = 10.0,
    ca_file: str = "",
) -> Outcome:
    """One ``POST auth/accesstokenrequest`` (with ``p-ticket`` when given), classified; never sleeps."""
    register_secret(credentials.password)
    register_secret(credentials.secret)
    body: dict[str, Any] = {
        "name": credentials.username,
        "password": credentials.password,
        "appId": app_id,
        "appVersion": app_version,
        "cid": cid,
        "sec": credentials.secret,
        "deviceId": device_id,
    }
    if ticket is not None:
        body["p-ticket"] = ticket
    try:
        status, raw = _http(_endpoint(rest_url, "/auth/accesstokenrequest"), body=orjson.dumps(body),
                            headers=_JSON_HEADERS, timeout=timeout, ca_file=ca_file)
    except _Unreachable as exc:
        return Failed(f"cannot reach the REST endpoint: {exc}")
    return _token_outcome(status, raw, Refused)


def _token_outcome(status: int, raw: bytes, on_error_text: Callable[[str], Outcome]) -> Outcome:
    """Classify an access-token response (login or renewal): lock-out, failure, penalty, errorText or grant."""
    if status in LOCKOUT_STATUSES:
        return Locked(status)
    if status != 200:
        return Failed(f"HTTP {status}", status)
    data = _json_object(raw)
    if isinstance(data, str):
        return Failed(data, status)
    penalty = _penalty_outcome(data)
    if penalty is not None:
        return penalty
    error = data.get("errorText")
    if error:
        # Server text: clipped before it reaches a log line, the status or the helper's pipe.
        return on_error_text(clip(str(error)))
    return _grant_of(data)


def renew_token(rest_url: str, token: str, *, timeout: float = 10.0, ca_file: str = "") -> Outcome:
    """One ``GET auth/renewaccesstoken`` with the bearer token, classified; never sleeps.

    401 (and 400, which some docs list for an expired token) or an ``errorText``
    give :class:`Unauthorized`: the caller logs in again.
    """
    register_secret(token)
    headers = {"Accept": "application/json", "Authorization": f"Bearer {token}"}
    try:
        status, raw = _http(_endpoint(rest_url, "/auth/renewaccesstoken"), body=None, headers=headers,
                            timeout=timeout, ca_file=ca_file)
    except _Unreachable as exc:
        return Failed(f"cannot reach the REST endpoint: {exc}")
    if status in (400, 401):
        return Unauthorized()
    return _token_outcome(status, raw, lambda _error: Unauthorized())
