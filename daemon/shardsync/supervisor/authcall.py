"""One REST call (login or renewal) run in a short-lived forked child.

The parent loop must never block on HTTP, and it must stay single-threaded;
so the blocking call runs in a child that writes the outcome to a pipe and
exits.  The token crosses only that pipe, in the format of :func:`outcome_to_json`
and :func:`outcome_from_json`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import orjson

from shardsync import auth
from shardsync.auth import Captcha, Failed, Grant, Locked, Outcome, Refused, Ticket, Unauthorized
from shardsync.config import Settings
from shardsync.credentials import Credentials
from shardsync.secrets import register_secret
from shardsync.supervisor.helper import HelperCall, fork_helper
from shardsync.supervisor.tokens import Action, DoLogin, DoRenew


class AuthCall(HelperCall):
    """A forked child doing one ``Action``; the parent reads its outcome from ``fd``."""

    def __init__(
        self, action: Action, pid: int, fd: int, deadline: float, *, kill: Callable[[int, int], None] = os.kill
    ) -> None:
        super().__init__(pid, fd, deadline, kill=kill)
        self.action = action
        self.exited = False

    @classmethod
    def start(cls, action: Action, settings: Settings, credentials: Credentials, now: float) -> AuthCall:
        timeout = settings.tradovate.handshake_timeout
        pid, read_fd = fork_helper(lambda: outcome_to_json(_call(action, settings, credentials, timeout)))
        # Twice the HTTP timeout: DNS, connect and read each have their own.
        return cls(action, pid, read_fd, now + 2 * timeout + 5)

    def read(self) -> Outcome | None:
        """Drain the pipe; the outcome once the child closed it, else None."""
        data = self.drain()
        if data is None:
            return None
        if not data:
            return Failed("login helper exited without an answer")
        try:
            return outcome_from_json(data)
        except ValueError as exc:
            return Failed(f"login helper answer unreadable: {exc}")


def _call(action: Action, settings: Settings, credentials: Credentials, timeout: float) -> Outcome:
    """The blocking REST call, in the helper."""
    t = settings.tradovate
    if isinstance(action, DoRenew):
        return auth.renew_token(t.rest_url, action.token, timeout=timeout, ca_file=t.ca_file)
    assert isinstance(action, DoLogin)
    return auth.request_token(
        t.rest_url, credentials, app_id=t.app_id, app_version=t.app_version, cid=t.cid,
        device_id=t.device_id, ticket=action.ticket, timeout=timeout, ca_file=t.ca_file,
    )


def outcome_to_json(outcome: Outcome) -> bytes:
    """The outcome as a JSON object with a ``kind``; the token travels only on this pipe."""
    match outcome:
        case Grant(token, expires_at, user_id):
            doc: dict[str, Any] = {"kind": "grant", "token": token, "expires_at": expires_at, "user_id": user_id}
        case Ticket(ticket, wait):
            doc = {"kind": "penalty", "ticket": ticket, "wait": wait}
        case Captcha():
            doc = {"kind": "captcha"}
        case Locked(status):
            doc = {"kind": "locked", "status": status}
        case Refused(text):
            doc = {"kind": "refused", "text": text}
        case Unauthorized():
            doc = {"kind": "unauthorized"}
        case Failed(reason, status):
            doc = {"kind": "failed", "reason": reason, "status": status}
        case _:
            raise TypeError(f"not an auth outcome: {type(outcome).__name__}")
    return orjson.dumps(doc)


def _field(doc: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"auth outcome field {key!r} is missing or has the wrong type")
    return value


def outcome_from_json(data: bytes) -> Outcome:
    """Parse :func:`outcome_to_json` output; raises ``ValueError`` on anything else."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ValueError("auth outcome is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("auth outcome is not a JSON object")
    kind = doc.get("kind")
    if kind == "grant":
        token = _field(doc, "token", str)
        register_secret(token)
        user_id = doc.get("user_id")
        if user_id is not None:
            user_id = _field(doc, "user_id", int)
        return Grant(token, float(_field(doc, "expires_at", (int, float))), user_id)
    if kind == "penalty":
        return Ticket(_field(doc, "ticket", str), float(_field(doc, "wait", (int, float))))
    if kind == "captcha":
        return Captcha()
    if kind == "locked":
        return Locked(_field(doc, "status", int))
    if kind == "refused":
        return Refused(_field(doc, "text", str))
    if kind == "unauthorized":
        return Unauthorized()
    if kind == "failed":
        status = doc.get("status")
        return Failed(_field(doc, "reason", str), None if status is None else _field(doc, "status", int))
    raise ValueError(f"unknown auth outcome kind {kind!r}")
