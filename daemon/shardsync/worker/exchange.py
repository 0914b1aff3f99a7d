"""The session's questions to the server: the ``o`` frame, ``authorize``, the syncrequest, each on a deadline.

What is awaited and by when is ``request.py``'s; this module sends the
requests and reads their answers.  A time penalty (``p-ticket``) is waited
out on the same socket and the same request sent again with its ticket
(authorize: query ``p-ticket=<ticket>``; syncrequest: a ``"p-ticket"`` key
in its body).  What the server refuses is told to the parent before the
session ends, because the parent owns the one API budget of all shards:
``Rejected`` (authorize refused with anything but 401, the syncrequest with
anything but 429: retrying will not fix it), ``Throttled`` (a 429, a quota
shutdown, a p-captcha: the whole API user must slow down).  The worker then
reconnects through the permit path with its normal short backoff; quota
shutdowns and 429s still wait ``quota_backoff`` here as well.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any, Final

from shardsync import protocol
from shardsync.protocol import Penalty, Response, ShutdownEvent
from shardsync.worker.connection import Connection
from shardsync.worker.ending import SessionEnded, TokenRejected
from shardsync.worker.options import WorkerOptions
from shardsync.worker.parent import ParentLink
from shardsync.worker.request import Awaiting
from shardsync.worker.snapshot import SyncRejected

#: What a session awaits, by name (the ``awaited`` of a ``response_timeout`` log line).
OPEN: Final = "o"
AUTHORIZE: Final = "authorize"
SYNC: Final = "user/syncrequest"
#: The endpoint a Throttled names for a quota shutdown (it ends the socket, not a request).
WEBSOCKET: Final = "websocket"

#: ``sync_sent(request_id, resend)``: the syncrequest went out (again, with a ticket, when ``resend``).
SyncSent = Callable[[int, bool], None]


class Exchange:
    """Requests of one connection and the answer awaited; the session passes it frames, it raises SessionEnded."""

    def __init__(
        self,
        options: WorkerOptions,
        remainder: int,
        link: ParentLink,
        *,
        sync_sent: SyncSent,
        clock: Callable[[], float],
        log: Any,
    ) -> None:
        self.options = options
        self._remainder = remainder
        self._link = link
        self._sync_sent = sync_sent
        self._clock = clock
        self.log = log
        self._conn: Connection | None = None
        self._token = ""
        self._next_id = 0
        #: What is awaited now (None once the syncrequest got its first answer).
        self.awaiting: Awaiting | None = None

    def begin(self, conn: Connection, token: str) -> None:
        """A new connection: request ids start over, and the ``o`` frame is due."""
        self._conn = conn
        self._token = token
        self._next_id = 0
        self.awaiting = Awaiting.sent(OPEN, None, self._clock(), self.options.response_timeout)

    def end(self) -> None:
        self._conn = None
        self.awaiting = None

    # --- frames in ----------------------------------------------------------------------

    def on_open(self) -> None:
        """The ``o`` frame: authorize with the raw token (a second ``o`` changes nothing)."""
        if self.awaiting is not None and self.awaiting.what == OPEN:
            request_id = self._request_id()
            self._send(protocol.encode_authorize(request_id, self._token))
            self.awaiting = Awaiting.sent(AUTHORIZE, request_id, self._clock(), self.options.response_timeout)

    def on_response(self, response: Response) -> bool:
        """Take an answer to what is awaited; False when it is for the snapshot (or for nothing awaited)."""
        awaiting = self.awaiting
        if awaiting is None or response.id != awaiting.request_id:
            return False
        if (penalty := response.penalty) is not None:
            self._penalised(awaiting, penalty)
            return True
        if awaiting.what == AUTHORIZE:
            self._authorized(response)
            return True
        # The syncrequest's first answer: from here the snapshot's own rule and bounds run.
        self.awaiting = None
        return False

    def on_shutdown(self, message: ShutdownEvent) -> SessionEnded:
        """The server's ``shutdown`` event: the session it ends (a quota reason also throttles)."""
        reason = f"server shutdown: {message.reason_code} {message.reason or ''}".strip()
        backoff = None
        if message.quota:
            self._link.throttled("quota", WEBSOCKET, reason)
            backoff = self.options.quota_backoff
        return SessionEnded(reason, backoff=backoff)

    def refused(self, exc: SyncRejected) -> float | None:
        """The syncrequest was refused: tell the parent; returns the backoff to use (None: the usual one)."""
        if exc.status == 429:
            self._link.throttled("ws429", SYNC, exc.text)
            return self.options.quota_backoff
        self._link.rejected(SYNC, exc.status, exc.text)
        return None

    # --- deadlines -----------------------------------------------------------------------

    def deadline(self) -> float | None:
        return None if self.awaiting is None else self.awaiting.deadline()

    def check(self, now: float) -> None:
        """Resend when a penalty's wait is over; end the session when an answer is late."""
        awaiting = self.awaiting
        if awaiting is None:
            return
        due = awaiting.due(now)
        if due == "resend":
            self._resend(awaiting)
        elif due == "timeout":
            timeout = self.options.response_timeout
            self.log.warning("response_timeout", awaited=awaiting.what, seconds=timeout,
                             penalties=awaiting.penalties)
            raise SessionEnded(f"no answer to {awaiting.what} within {timeout:g} s")

    # --- requests out ----------------------------------------------------------------------

    def _authorized(self, response: Response) -> None:
        if response.status == 401:
            self._link.reject_token(self._token)
            raise TokenRejected(f"token rejected by authorize: {response.error_text}")
        if not response.ok:
            text = response.error_text
            backoff = None
            if response.status == 429:
                self._link.throttled("ws429", AUTHORIZE, text)
                backoff = self.options.quota_backoff
            else:
                self._link.rejected(AUTHORIZE, response.status, text)
            raise SessionEnded(f"authorize failed with {response.status}: {text}", backoff=backoff)
        self.log.info("authorized")
        request_id = self._request_id()
        self._send(protocol.encode_request(SYNC, request_id, "", self._sync_body()))
        self.awaiting = Awaiting.sent(SYNC, request_id, self._clock(), self.options.response_timeout)
        self._sync_sent(request_id, False)

    def _penalised(self, awaiting: Awaiting, penalty: Penalty) -> None:
        """A time penalty: wait it out on this socket, then resend; a captcha is the parent's to pace."""
        if penalty.captcha:
            self._link.throttled("captcha", awaiting.what, "p-captcha")
            raise SessionEnded(f"{awaiting.what} answered with a captcha (p-captcha): the next attempt waits "
                               f"for the parent's permit")
        wait = awaiting.penalised(penalty, self._clock())
        self.log.warning("time_penalty", endpoint=awaiting.what, p_time=wait, penalties=awaiting.penalties)

    def _resend(self, awaiting: Awaiting) -> None:
        assert awaiting.ticket is not None
        request_id = self._request_id()
        if awaiting.what == AUTHORIZE:
            query = urllib.parse.urlencode({"p-ticket": awaiting.ticket})
            self._send(protocol.encode_request(AUTHORIZE, request_id, query, self._token))
        else:
            body = self._sync_body()
            body["p-ticket"] = awaiting.ticket
            self._send(protocol.encode_request(SYNC, request_id, "", body))
        awaiting.resent(request_id, self._clock(), self.options.response_timeout)
        self.log.info("request_resent", endpoint=awaiting.what, penalties=awaiting.penalties)
        if awaiting.what == SYNC:
            self._sync_sent(request_id, True)

    def _sync_body(self) -> dict[str, Any]:
        options = self.options
        return protocol.sync_request_body(
            divisor=options.divisor, remainder=self._remainder, expression=options.expression,  # type: ignore[arg-type]
            entity_types=options.entity_types, split_responses=options.split_responses,
        )

    def _send(self, text: str) -> None:
        assert self._conn is not None
        self._conn.send(text)

    def _request_id(self) -> int:
        request_id = self._next_id
        self._next_id += 1
        return request_id
