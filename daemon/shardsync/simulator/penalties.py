"""Time penalties on socket requests (``authorize``, ``user/syncrequest``). Pure: the clock is passed in.

Armed by ``socket_penalty(endpoint, mode, count, p_time)``: the next ``count``
requests to ``endpoint`` are answered ``{"s":200,"i":id,"d":{"p-ticket":T,"p-time":S}}``
(``mode="captcha"`` adds ``"p-captcha":true``). Then, per endpoint:

* a request carrying an outstanding ticket at least ``p-time`` after it was
  issued is served normally (the ticket is used up);
* while any ticket of the endpoint is outstanding, a request without one, with
  an unknown one or with one that is not yet due is penalised again with a fresh
  ticket (an early ticket is withdrawn) - the limiter counts the user, not the socket;
* a captcha answer leaves no ticket to redeem (Tradovate: a third-party app
  cannot solve it), so once its ``count`` is spent requests are served again.

``socket_penalty(endpoint, count=0)`` disarms the endpoint and forgets its tickets.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

ENDPOINTS = ("authorize", "syncrequest")
MODES = ("ticket", "captcha")


@dataclass
class _Endpoint:
    mode: str = "ticket"
    left: int = 0
    p_time: float = 1.0
    tickets: dict[str, float] = field(default_factory=dict)  # ticket -> due at
    issued: int = 0
    redeemed: int = 0


class SocketPenalties:
    """Penalty state of both socket endpoints."""

    def __init__(self) -> None:
        self._endpoints = {name: _Endpoint() for name in ENDPOINTS}

    def arm(self, endpoint: str, mode: str, count: int, p_time: float) -> None:
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if count < 0 or p_time < 0:
            raise ValueError("count and p_time must be >= 0")
        state = self._endpoints[endpoint]
        state.mode, state.left, state.p_time = mode, count, p_time
        if count == 0:
            state.tickets.clear()

    def check(self, endpoint: str, ticket: str | None, now: float) -> dict[str, Any] | None:
        """The penalty body to answer with, or None when the request is to be served."""
        state = self._endpoints[endpoint]
        if ticket is not None and ticket in state.tickets:
            if now >= state.tickets[ticket]:
                del state.tickets[ticket]
                state.redeemed += 1
                return None
            del state.tickets[ticket]  # an early retry loses its ticket and gets a new wait
            return self._penalise(state, now, "ticket")
        if state.left > 0:
            state.left -= 1
            return self._penalise(state, now, state.mode)
        if state.tickets:
            return self._penalise(state, now, "ticket")
        return None

    def _penalise(self, state: _Endpoint, now: float, mode: str) -> dict[str, Any]:
        state.issued += 1
        ticket = secrets.token_hex(16)
        body: dict[str, Any] = {"p-ticket": ticket, "p-time": state.p_time}
        if mode == "captcha":
            body["p-captcha"] = True
        else:
            state.tickets[ticket] = now + state.p_time
        return body

    def as_stats(self) -> dict[str, Any]:
        return {name: {"issued": s.issued, "redeemed": s.redeemed, "outstanding": len(s.tickets), "armed": s.left}
                for name, s in self._endpoints.items()}
