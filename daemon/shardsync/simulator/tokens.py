"""REST authentication state: sessions, tokens, penalties and lock-outs. Pure: the clock is passed in.

A login beyond ``session_cap`` evicts the oldest session: its tokens are revoked
(authorize answers 401) and their renewal answers ``eviction_status``: 401 by
default, or 408/502 with an empty body (what a field report saw on renewal).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from shardsync.simulator.generator import iso

BAD_CREDENTIALS = "Incorrect username or password. Please try again."


@dataclass
class Token:
    value: str
    session_id: int
    expires_at: float
    revoked: bool = False
    evicted: bool = False

    def valid(self, now: float) -> bool:
        return not self.revoked and now < self.expires_at


@dataclass
class Penalty:
    ticket: str
    ready_at: float


@dataclass
class Reply:
    """An HTTP answer: status and JSON body (None = empty body)."""

    status: int
    body: dict[str, Any] | None


@dataclass
class AuthState:
    username: str
    password: str
    secret: str
    user_id: int
    token_lifetime: float
    session_cap: int
    logins: int = 0
    renewals: int = 0
    tokens: dict[str, Token] = field(default_factory=dict)
    sessions: OrderedDict[int, list[str]] = field(default_factory=OrderedDict)
    ticket_penalties: int = 0
    captcha_penalties: int = 0
    penalty_seconds: float = 1.0
    open_penalty: Penalty | None = None
    lockouts: list[int] = field(default_factory=list)  # HTTP statuses for the next requests
    eviction_status: int = 401
    _next_session: int = 1

    def login(self, body: Any, now: float) -> tuple[Reply, list[str]]:
        """Answer an accesstokenrequest; also returns the tokens revoked by session-cap eviction."""
        self.logins += 1
        if self.lockouts:
            return Reply(self.lockouts.pop(0), None), []
        if not isinstance(body, dict):
            return Reply(200, {"errorText": "Request body must be a JSON object"}), []
        if self.captcha_penalties > 0:
            self.captcha_penalties -= 1
            return Reply(200, {"p-ticket": secrets.token_hex(16), "p-time": self.penalty_seconds,
                               "p-captcha": True}), []
        if self.open_penalty is not None:
            # Only a retry carrying the outstanding ticket, after p-time, gets through.
            if body.get("p-ticket") == self.open_penalty.ticket and now >= self.open_penalty.ready_at:
                self.open_penalty = None
            else:
                return self._penalize(now), []
        elif self.ticket_penalties > 0:
            self.ticket_penalties -= 1
            return self._penalize(now), []
        if (body.get("name") != self.username or body.get("password") != self.password
                or body.get("sec", self.secret) != self.secret):
            return Reply(200, {"errorText": BAD_CREDENTIALS}), []
        session_id = self._next_session
        self._next_session += 1
        self.sessions[session_id] = []
        evicted: list[str] = []
        while self.session_cap and len(self.sessions) > self.session_cap:
            _, old_tokens = self.sessions.popitem(last=False)
            for value in old_tokens:
                self.tokens[value].revoked = True
                self.tokens[value].evicted = True
            evicted += old_tokens
        return Reply(200, self._issue(session_id, now)), evicted

    def renew(self, authorization: str | None, now: float) -> Reply:
        self.renewals += 1
        value = (authorization or "").removeprefix("Bearer ").strip()
        token = self.tokens.get(value)
        if token is not None and token.evicted:
            return Reply(self.eviction_status, None)
        if token is None or not token.valid(now):
            return Reply(401, None)
        return Reply(200, self._issue(token.session_id, now))

    def check(self, value: str, now: float) -> Token | None:
        token = self.tokens.get(value)
        return token if token is not None and token.valid(now) else None

    def revoke(self, value: str | None = None) -> list[str]:
        """Revoke one token, or every token when ``value`` is None; returns those revoked."""
        doomed = [value] if value is not None else list(self.tokens)
        for v in doomed:
            if v in self.tokens:
                self.tokens[v].revoked = True
        return [v for v in doomed if v in self.tokens]

    def _penalize(self, now: float) -> Reply:
        self.open_penalty = Penalty(secrets.token_hex(16), now + self.penalty_seconds)
        return Reply(200, {"p-ticket": self.open_penalty.ticket, "p-time": self.penalty_seconds})

    def _issue(self, session_id: int, now: float) -> dict[str, Any]:
        value = secrets.token_urlsafe(32)
        token = Token(value, session_id, now + self.token_lifetime)
        self.tokens[value] = token
        self.sessions[session_id].append(value)
        return {
            "accessToken": value,
            "mdAccessToken": secrets.token_urlsafe(32),
            "expirationTime": iso(token.expires_at),
            "passwordExpirationTime": iso(now + 180 * 86400),
            "userStatus": "Active",
            "userId": self.user_id,
            "name": self.username,
            "hasLive": False,
        }
