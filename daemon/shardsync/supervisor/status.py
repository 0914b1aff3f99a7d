"""The status/metrics HTTP listener, served from the parent's selector loop.

The parent has no threads, so this is a tiny non-blocking HTTP/1.0-style
server: the loop hands every ready key this server owns to :meth:`handle`,
and drops slow clients with :meth:`expire` at :meth:`next_deadline`.  Each
connection carries one request and is closed after the response.

Endpoints: ``/status`` (JSON), ``/metrics`` (Prometheus text), ``/healthz``
(200 when every shard is live, 503 otherwise).  The loop owns the shard table
and passes a provider returning a :class:`StatusSnapshot`; this module only
renders.  The snapshot types have no field that could hold a secret, and
``last_error`` is passed through the log redactor on the way out.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import orjson

from shardsync.ipc import ShardState
from shardsync.logs import get_logger
from shardsync.secrets import redact_text
from shardsync.supervisor import metrics

__all__ = ["LIVE", "MAX_HEAD", "ShardStatus", "StatusServer", "StatusSnapshot", "render_healthz", "render_status"]

LIVE: Final = ShardState.LIVE
MAX_HEAD: Final = 8192
IDLE_TIMEOUT: Final = 5.0
MAX_CONNECTIONS: Final = 64
ACCEPT_PAUSE: Final = 1.0
_ACCEPT_BATCH: Final = 32
_MAX_ERROR: Final = 500

_log = get_logger("shardsync.status")


@dataclass(frozen=True, slots=True)
class ShardStatus:
    """One shard as the parent sees it; times are seconds, None when not applicable."""

    remainder: int
    state: str  # the worker's heartbeat state while it runs, else the parent's (backoff, hung, parked...)
    pid: int | None = None
    uptime: float | None = None  # since the current worker was forked
    restarts: int = 0
    parked: bool = False
    last_heartbeat_age: float | None = None
    events_per_s: float = 0.0
    events: int = 0
    entities: int = 0
    reconnects: int = 0
    last_error: str | None = None
    next_restart_in: float | None = None

    @property
    def live(self) -> bool:
        """Connected and streaming (a parked shard never is)."""
        return self.state == LIVE and not self.parked


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """The parent at one instant: identity, readiness and every shard."""

    pid: int
    started_at: float  # wall clock, seconds since the epoch
    uptime: float
    ready: bool
    divisor: int
    shards: tuple[ShardStatus, ...] = ()

    def summary(self) -> dict[str, int]:
        """Shards per state (a parked shard counts as parked), always with live/backoff/parked."""
        return summarize((s.state, s.parked) for s in self.shards)


def summarize(shards: Iterable[tuple[str, bool]]) -> dict[str, int]:
    """Counts per state of ``(state, parked)`` pairs: a parked shard counts as parked; plus the total."""
    # Plain str keys: orjson refuses str subclasses (the enum) as dict keys.
    counts = Counter(str(ShardState.PARKED if parked else state) for state, parked in shards)
    always = {str(state): 0 for state in (ShardState.LIVE, ShardState.BACKOFF, ShardState.PARKED)}
    return {"total": sum(counts.values()), **always, **counts}


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def render_status(snap: StatusSnapshot) -> bytes:
    """The ``/status`` JSON document."""
    shards = [
        {
            "remainder": s.remainder,
            "state": s.state,
            "pid": s.pid,
            "uptime": _seconds(s.uptime),
            "restarts": s.restarts,
            "parked": s.parked,
            "last_heartbeat_age": _seconds(s.last_heartbeat_age),
            "events_per_s": round(s.events_per_s, 2),
            "events": s.events,
            "entities": s.entities,
            "reconnects": s.reconnects,
            "last_error": None if s.last_error is None else redact_text(s.last_error[:_MAX_ERROR]),
            "next_restart_in": _seconds(s.next_restart_in),
        }
        for s in snap.shards
    ]
    doc = {
        "pid": snap.pid,
        "started_at": snap.started_at,
        "uptime": _seconds(snap.uptime),
        "ready": snap.ready,
        "divisor": snap.divisor,
        "summary": snap.summary(),
        "shards": shards,
    }
    return orjson.dumps(doc)


def render_healthz(snap: StatusSnapshot) -> tuple[int, bytes]:
    """``(200, "ok")`` when every shard is live and none parked, else 503 and why."""
    if not snap.shards:
        return 503, b"no shards running\n"
    if all(s.live for s in snap.shards):
        return 200, b"ok\n"
    parked = [str(s.remainder) for s in snap.shards if s.parked]
    down = [f"{s.remainder} ({s.state})" for s in snap.shards if not s.live and not s.parked]
    live = sum(s.live for s in snap.shards)
    reason = f"{live}/{len(snap.shards)} live"
    if parked:
        reason += "; parked: " + ", ".join(parked[:16]) + (" ..." if len(parked) > 16 else "")
    if down:
        reason += "; not live: " + ", ".join(down[:16]) + (" ..." if len(down) > 16 else "")
    return 503, reason.encode() + b"\n"


_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TEXT: Final = "text/plain; charset=utf-8"


def _response(code: int, body: bytes, content_type: str = _TEXT, *, head: bool = False, extra: str = "") -> bytes:
    header = (
        f"HTTP/1.1 {code} {_REASONS[code]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    )
    return header.encode("ascii") + (b"" if head else body)


_READING, _WRITING, _DRAINING = "reading", "writing", "draining"


class _Connection:
    """One client: request head in, one response out, then a lingering close."""

    __slots__ = ("deadline", "inbuf", "outbuf", "phase", "server", "sock")

    def __init__(self, server: StatusServer, sock: socket.socket, deadline: float) -> None:
        self.server = server
        self.sock = sock
        self.deadline = deadline
        self.inbuf = bytearray()
        self.outbuf = memoryview(b"")
        self.phase = _READING


class StatusServer:
    """A non-blocking HTTP listener whose every step is one call from the selector loop."""

    def __init__(
        self,
        address: tuple[str, int],
        provider: Callable[[], StatusSnapshot],
        *,
        clock: Callable[[], float] = time.monotonic,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self._provider = provider
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._selector: selectors.BaseSelector | None = None
        self._connections: dict[int, _Connection] = {}
        self._paused_until: float | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port."""
        host, port = self._listener.getsockname()[:2]
        return host, port

    @property
    def port(self) -> int:
        """The bound port (the real one when asked for port 0)."""
        return self.address[1]

    @property
    def connections(self) -> int:
        """Clients currently open."""
        return len(self._connections)

    def register(self, selector: selectors.BaseSelector) -> None:
        """Watch the listener in ``selector``; connections are added to the same one."""
        self._selector = selector
        selector.register(self._listener, selectors.EVENT_READ, self)

    def owns(self, key: selectors.SelectorKey) -> bool:
        """Whether ``key`` belongs to this server (the listener or one of its clients)."""
        data = key.data
        return data is self or (isinstance(data, _Connection) and data.server is self)

    def handle(self, selector: selectors.BaseSelector, key: selectors.SelectorKey, mask: int) -> None:
        """Do whatever ``key`` is ready for, without blocking."""
        self._selector = selector
        if key.data is self:
            self._accept(selector)
            return
        conn: _Connection = key.data
        if conn.phase == _WRITING:
            if mask & selectors.EVENT_WRITE:
                self._write(conn)
        elif mask & selectors.EVENT_READ:
            self._read(conn)

    def next_deadline(self) -> float | None:
        """The earliest time (on the server's clock) :meth:`expire` has work to do, or None."""
        deadlines = [c.deadline for c in self._connections.values()]
        if self._paused_until is not None:
            deadlines.append(self._paused_until)
        return min(deadlines, default=None)

    def expire(self, now: float | None = None) -> int:
        """Drop every client past its deadline (and resume a paused listener); returns how many."""
        now = self._clock() if now is None else now
        if self._paused_until is not None and now >= self._paused_until and self._selector is not None:
            self._paused_until = None
            self._selector.register(self._listener, selectors.EVENT_READ, self)
        late = [c for c in self._connections.values() if c.deadline <= now]
        for conn in late:
            self._close(conn)
        return len(late)

    def close(self) -> None:
        """Stop listening and drop every client (shutdown, or a changed listen address)."""
        for conn in list(self._connections.values()):
            self._close(conn)
        if self._selector is not None and self._paused_until is None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._listener)
        self._paused_until = None
        self._listener.close()

    def close_after_fork(self) -> None:
        """Close this process's copies of every socket, leaving the parent's untouched.

        Only ``close()`` on the descriptors: no ``shutdown()`` (that would end the
        parent's connections too) and no selector calls (the selector is the parent's).
        """
        for conn in self._connections.values():
            conn.sock.close()
        self._connections.clear()
        self._listener.close()

    # -- internals -------------------------------------------------------------

    def _accept(self, selector: selectors.BaseSelector) -> None:
        # A bounded batch keeps one flood of connects from starving the shards' pipes.
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue  # the client gave up while queued
                # EMFILE and friends: the listener stays readable, so watching it now
                # would spin the loop and flood the log. Look again after a pause.
                _log.warning("status_accept_failed", error=str(exc), retry_in=ACCEPT_PAUSE)
                selector.unregister(self._listener)
                self._paused_until = self._clock() + ACCEPT_PAUSE
                return
            if len(self._connections) >= self._max_connections:
                sock.close()  # refusing by closing: leaving it queued keeps the listener readable forever
                continue
            sock.setblocking(False)
            conn = _Connection(self, sock, self._clock() + self._idle_timeout)
            self._connections[sock.fileno()] = conn
            selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Connection) -> None:
        try:
            chunk = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not chunk:
            self._close(conn)
            return
        if conn.phase == _DRAINING:
            return  # discarded: read only so that close() does not reset the connection
        start = max(0, len(conn.inbuf) - 3)
        conn.inbuf += chunk
        end = _head_end(conn.inbuf, start)
        if 0 <= end <= MAX_HEAD:
            self._respond(conn, self._answer(bytes(conn.inbuf[:end])))
        elif len(conn.inbuf) > MAX_HEAD:
            self._respond(conn, _response(431, b"request head too large\n"))

    def _answer(self, head: bytes) -> bytes:
        request_line = head.split(b"\n", 1)[0].strip()
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _response(400, b"bad request\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        is_head = method == b"HEAD"
        if method != b"GET" and not is_head:
            return _response(405, b"method not allowed\n", extra="Allow: GET, HEAD\r\n")
        try:
            if target == b"/status":
                return _response(200, render_status(self._provider()), "application/json", head=is_head)
            if target == b"/metrics":
                return _response(200, metrics.render(self._provider), metrics.CONTENT_TYPE, head=is_head)
            if target == b"/healthz":
                code, body = render_healthz(self._provider())
                return _response(code, body, head=is_head)
        except Exception:
            # A rendering bug must cost one response, never the supervisor.
            _log.exception("status_render_failed", path=target.decode("ascii", "replace"))
            return _response(500, b"internal error\n", head=is_head)
        return _response(404, b"not found; try /status, /metrics or /healthz\n", head=is_head)

    def _respond(self, conn: _Connection, data: bytes) -> None:
        conn.inbuf.clear()
        conn.outbuf = memoryview(data)
        conn.phase = _WRITING
        self._write(conn)

    def _write(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        conn.outbuf = conn.outbuf[sent:]
        if conn.outbuf:
            self._modify(conn, selectors.EVENT_WRITE)
            return
        # Half-close and read until the client's EOF: closing with unread request bytes
        # queued would send a RST that can destroy the response before the client reads it.
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.phase = _DRAINING
        self._modify(conn, selectors.EVENT_READ)

    def _modify(self, conn: _Connection, events: int) -> None:
        if self._selector is None:
            return
        if self._selector.get_key(conn.sock).events != events:
            self._selector.modify(conn.sock, events, conn)

    def _close(self, conn: _Connection) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            self._connections.pop(fd, None)
            if self._selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(conn.sock)
        conn.sock.close()


def _head_end(buf: bytearray, start: int) -> int:
    """Index just past the blank line ending the request head, or -1."""
    crlf = buf.find(b"\r\n\r\n", start)
    lf = buf.find(b"\n\n", start)
    ends = [i + 4 for i in (crlf,) if i >= 0] + [i + 2 for i in (lf,) if i >= 0]
    return min(ends, default=-1)
