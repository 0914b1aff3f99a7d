"""How a session ends: the one exception every part of a session raises to end it, and its 401 kind."""

from __future__ import annotations


class SessionEnded(Exception):
    """The current session is over; ``backoff`` overrides the usual reconnect delay."""

    def __init__(self, reason: str, *, backoff: float | None = None, reached_live: bool = False) -> None:
        self.backoff = backoff
        self.reached_live = reached_live
        super().__init__(reason)


class TokenRejected(SessionEnded):
    """authorize answered 401: the parent must hand out a fresh token."""
