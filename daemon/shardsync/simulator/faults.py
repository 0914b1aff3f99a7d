"""Connection and authentication faults: the knobs that cut, close, stall, refuse or penalise.

Each is a method of :class:`~shardsync.simulator.server.SimServer` (mixed in from
here), reachable as ``POST /admin/<knob>`` with its keyword arguments as a JSON
object, and as a method of :class:`~shardsync.simulator.handle.Simulator`.
``remainder``/``divisor`` pick the synced sockets of one shard (``remainder``
None: every open socket, synced or not). Knobs must run on the loop thread.

* ``drop``: abort the TCP connection, no close frame (the peer reads a FIN).
* ``reset``: the same with ``SO_LINGER`` 0 first, so the peer gets a TCP RST.
* ``close`` (``close_frame``): a SockJS ``c[code,"reason"]`` frame, then a WebSocket close.
* ``shutdown``: a ``shutdown`` event with ``reasonCode``, then close 1000.
* ``revoke``: revoke one token or all (sockets keep streaming unless ``close_on_revoke``).
* ``stall``/``unstall``: stop reading and writing (no ``h`` either), for a time or until unstalled.
* ``refuse(seconds)``: for that long every new WebSocket upgrade is answered HTTP 503
  (REST and admin calls still work); ``refuse(0)`` ends it.
* ``ws429(count)``: the next syncrequests are answered ``{"s":429,"i":id}``.
* ``penalty``/``lockout``: p-ticket/p-captcha or 423/429 on the next logins (REST).
* ``socket_penalty(endpoint, mode, count, p_time)``: p-ticket/p-captcha on the next
  ``authorize`` or ``syncrequest`` socket requests (rules in :mod:`.penalties`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import orjson

from shardsync.simulator.options import SimOptions
from shardsync.simulator.penalties import SocketPenalties
from shardsync.simulator.records import Records
from shardsync.simulator.session import WsSession
from shardsync.simulator.tokens import AuthState


def select_sessions(sessions: Iterable[WsSession], remainder: int | None = None,
                    divisor: int | None = None) -> list[WsSession]:
    """Open sockets of one remainder (``None`` = every socket, synced or not)."""
    found = []
    for session in sessions:
        if session.closed:
            continue
        if remainder is None:
            found.append(session)
            continue
        shard = session.scope.shard if session.scope is not None else None
        if shard is not None and shard.remainder == remainder and divisor in (None, shard.divisor):
            found.append(session)
    return found


class Faults:
    """Mixed into SimServer; these attributes are the server's."""

    options: SimOptions
    auth: AuthState
    records: Records
    sessions: dict[int, WsSession]
    socket_penalties: SocketPenalties
    ws429_left: int
    refuse_until: float

    def targets(self, remainder: int | None = None, divisor: int | None = None) -> list[WsSession]:
        """Open sockets of one remainder (``None`` = every socket, synced or not)."""
        return select_sessions(self.sessions.values(), remainder, divisor)

    def drop(self, remainder: int | None = None, divisor: int | None = None) -> int:
        """Abort sockets without a close frame (a network cut)."""
        sessions = self.targets(remainder, divisor)
        for session in sessions:
            self.records.close(session.id, "server", 1006, "dropped")
            session.abort()
        return len(sessions)

    def reset(self, remainder: int | None = None, divisor: int | None = None) -> int:
        """Like :meth:`drop`, but the peer gets a TCP RST instead of a FIN."""
        sessions = self.targets(remainder, divisor)
        for session in sessions:
            self.records.close(session.id, "server", 1006, "reset")
            session.reset()
        return len(sessions)

    def close_frame(self, code: int = 3000, reason: str = "Go away!", remainder: int | None = None,
                    divisor: int | None = None) -> int:
        """Send a SockJS ``c[code,"reason"]`` frame, then close the WebSocket."""
        sessions = self.targets(remainder, divisor)
        for session in sessions:
            session.send_raw(b"c" + orjson.dumps([code, reason]))
            session.close(1000, reason)
        return len(sessions)

    def shutdown(self, reason_code: str = "Maintenance", reason: str = "Server maintenance",
                 remainder: int | None = None, divisor: int | None = None) -> int:
        """Send a ``shutdown`` event with ``reason_code``, then close."""
        sessions = self.targets(remainder, divisor)
        for session in sessions:
            self.shutdown_one(session, reason_code, reason)
        return len(sessions)

    def shutdown_one(self, session: WsSession, reason_code: str, reason: str) -> None:
        session.enqueue({"e": "shutdown", "d": {"reasonCode": reason_code, "reason": reason}})
        session.flush_pending()
        session.close(1000, reason_code)

    def evict(self, tokens: list[str]) -> None:
        """Sockets authorized with tokens of an evicted login session get ConnectionQuotaReached."""
        doomed = set(tokens)
        for session in list(self.sessions.values()):
            if session.token in doomed and not session.closed:
                self.shutdown_one(session, "ConnectionQuotaReached", "Connection quota reached")

    def revoke(self, token: str | None = None) -> int:
        """Revoke one token (or all); its sockets keep streaming unless ``close_on_revoke``."""
        revoked = set(self.auth.revoke(token))
        if self.options.close_on_revoke:
            for session in list(self.sessions.values()):
                if session.token in revoked:
                    session.close(1008, "Access token revoked")
        return len(revoked)

    def stall(self, seconds: float | None = None, remainder: int | None = None, divisor: int | None = None) -> int:
        """Stop reading and writing (no ``h`` either) for ``seconds``, or until :meth:`unstall`."""
        sessions = self.targets(remainder, divisor)
        for session in sessions:
            session.stall(seconds)
        return len(sessions)

    def unstall(self, remainder: int | None = None, divisor: int | None = None) -> int:
        sessions = self.targets(remainder, divisor)
        for session in sessions:
            session.unstall()
        return len(sessions)

    def refuse(self, seconds: float) -> None:
        """Answer new WebSocket upgrades with HTTP 503 for ``seconds`` (REST keeps working)."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        self.refuse_until = time.monotonic() + seconds

    def refusing(self) -> bool:
        return time.monotonic() < self.refuse_until

    def ws429(self, count: int = 1) -> None:
        """Answer the next ``count`` syncrequests with ``{"s":429,"i":id}``."""
        self.ws429_left = count

    def penalty(self, mode: str = "ticket", count: int = 1, p_time: float = 1.0) -> None:
        """Answer the next ``count`` logins with a p-ticket (``ticket``) or a p-captcha (``captcha``)."""
        if mode not in ("ticket", "captcha"):
            raise ValueError("mode must be ticket or captcha")
        self.auth.penalty_seconds = p_time
        if mode == "ticket":
            self.auth.ticket_penalties = count
        else:
            self.auth.captcha_penalties = count

    def socket_penalty(self, endpoint: str = "authorize", mode: str = "ticket", count: int = 1,
                       p_time: float = 1.0) -> None:
        """Answer the next ``count`` ``authorize`` or ``syncrequest`` socket requests with a time penalty."""
        self.socket_penalties.arm(endpoint, mode, count, p_time)

    def lockout(self, status: int = 429, count: int = 1) -> None:
        """Answer the next ``count`` logins with HTTP ``status`` (423 or 429) and an empty body."""
        if status not in (423, 429):
            raise ValueError("status must be 423 or 429")
        self.auth.lockouts = [status] * count
