"""What the session awaits from the server: every answer on a deadline, a time penalty waited out on the socket (pure).

A session awaits one thing at a time: the ``o`` frame after the upgrade,
the answer to ``authorize``, the first answer to ``user/syncrequest``.  Each
must come within ``response_timeout`` of when it was asked for (the
connection opened, the request sent).  A ``p-ticket`` answer (HTTP 200 with
``p-ticket``/``p-time``) is not a refusal: the same request goes again on
the same socket, with the ticket, ``p-time`` seconds later, and its answer
is due ``response_timeout`` after that resend.  The session's loop keeps
reading meanwhile, so the client ``[]`` and the heartbeats to the parent go
on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

from shardsync.protocol import Penalty

#: A server asking for a longer wait is taken at this word (Tradovate's own advice for captchas is "about an hour").
MAX_PENALTY_WAIT: Final = 3600.0

Due = Literal["resend", "timeout"]


@dataclass(slots=True)
class Awaiting:
    """One outstanding question to the server: what it is, its request id, and when something must happen."""

    what: str
    #: The id of the request last sent (None for the ``o`` frame, which answers no request).
    request_id: int | None
    #: When the answer is due; None while a penalty is waited out.
    answer_by: float | None
    #: When to resend after a time penalty; None otherwise.
    resend_at: float | None = None
    #: The ticket to resend with.
    ticket: str | None = None
    #: Time penalties this request received so far.
    penalties: int = 0

    @classmethod
    def sent(cls, what: str, request_id: int | None, now: float, timeout: float) -> Awaiting:
        """``what`` was asked for at ``now``; its answer is due ``timeout`` seconds later."""
        return cls(what, request_id, now + timeout)

    def penalised(self, penalty: Penalty, now: float) -> float:
        """The answer was a time penalty: resend after ``p-time`` (bounded); returns the wait."""
        wait = penalty.time if math.isfinite(penalty.time) else MAX_PENALTY_WAIT
        wait = min(max(0.0, wait), MAX_PENALTY_WAIT)
        self.answer_by = None
        self.resend_at = now + wait
        self.ticket = penalty.ticket
        self.penalties += 1
        return wait

    def resent(self, request_id: int, now: float, timeout: float) -> None:
        """The request went again (with the ticket) as ``request_id`` at ``now``."""
        self.request_id = request_id
        self.answer_by = now + timeout
        self.resend_at = None

    def deadline(self) -> float | None:
        """The next moment something must happen: the resend, or the answer's deadline."""
        return self.resend_at if self.resend_at is not None else self.answer_by

    def due(self, now: float) -> Due | None:
        """``resend`` when a penalty's wait is over, ``timeout`` when the answer is late, else None."""
        if self.resend_at is not None:
            return "resend" if now >= self.resend_at else None
        if self.answer_by is not None and now >= self.answer_by:
            return "timeout"
        return None
