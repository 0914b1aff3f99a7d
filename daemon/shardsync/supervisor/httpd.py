"""The status/metrics HTTP listener, served from the parent's selector loop.

The parent has no threads, so this is a tiny non-blocking HTTP/1.0-style
server.  Every key it registers carries its own handler as the key's data
(the loop calls ``key.data(mask)``), and :meth:`StatusServer.expire` drops
slow clients at :meth:`StatusServer.next_deadline`.  Each connection carries
one request and is closed after the response.

Nobody can block a scrape: a client has ``read_timeout`` (2 s) from its
connect to send a whole request head and ``write_timeout`` to take the
answer; at most ``max_connections`` are open, and when all are taken a new
client closes the oldest one that is not being answered (still reading, or
answered and lingering), so idle or slow clients make room for real ones.
The listener has no authentication: it binds loopback unless configured
otherwise (README "Status and metrics").

Endpoints: ``/status`` and ``/healthz`` (rendered by ``status.py``) and
``/metrics`` (``metrics.py``), each from one fresh snapshot of a provider.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time
from collections.abc import Callable
from typing import Final

from shardsync.logs import get_logger
from shardsync.supervisor import metrics
from shardsync.supervisor.status import StatusSnapshot, render_healthz, render_status

__all__ = ["MAX_HEAD", "StatusServer"]

MAX_HEAD: Final = 8192
#: Seconds from connect to a complete request head.
READ_TIMEOUT: Final = 2.0
#: Seconds to take the response (and close) once it is ready.
WRITE_TIMEOUT: Final = 5.0
MAX_CONNECTIONS: Final = 64
ACCEPT_PAUSE: Final = 1.0
_ACCEPT_BATCH: Final = 32
#: The kernel caps it at net.core.somaxconn (4096 on Debian 12).
LISTEN_BACKLOG: Final = 1024

_log = get_logger("shardsync.status")


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

    def __call__(self, mask: int) -> None:
        """The selector key's handler: do whatever this client is ready for."""
        self.server._ready(self, mask)


class StatusServer:
    """A non-blocking HTTP listener whose every step is one call from the selector loop."""

    def __init__(
        self,
        address: tuple[str, int],
        provider: Callable[[], StatusSnapshot],
        *,
        clock: Callable[[], float] = time.monotonic,
        idle_timeout: float = READ_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            # A burst of idle connects must not fill the kernel's accept queue: a scrape's handshake
            # behind a full queue is dropped and retried only after a second. Accepted, the oldest
            # idle client makes room (MAX_CONNECTIONS).
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self._provider = provider
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._write_timeout = write_timeout
        self._max_connections = max_connections
        #: Clients closed to make room for newer ones (for tests and the log).
        self.evicted = 0
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
        """Watch the listener in ``selector``; connections are added to the same one.

        Each key's data is its handler, called with the ready mask: the loop
        needs to know nothing about this server's keys.
        """
        self._selector = selector
        selector.register(self._listener, selectors.EVENT_READ, self._on_listener)

    def _on_listener(self, mask: int) -> None:
        if self._selector is not None:
            self._accept(self._selector)

    def _ready(self, conn: _Connection, mask: int) -> None:
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
            self._selector.register(self._listener, selectors.EVENT_READ, self._on_listener)
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
            if len(self._connections) >= self._max_connections and not self._evict_one():
                sock.close()  # every slot is sending an answer: refuse by closing (queued, it would spin)
                continue
            sock.setblocking(False)
            conn = _Connection(self, sock, self._clock() + self._idle_timeout)
            self._connections[sock.fileno()] = conn
            selector.register(sock, selectors.EVENT_READ, conn)

    def _evict_one(self) -> bool:
        """Close the oldest client not being answered right now, to make room; False when every one is."""
        # Dict order is accept order: the first match is the oldest.
        victim = next((c for c in self._connections.values() if c.phase != _WRITING), None)
        if victim is None:
            return False
        self._close(victim)
        self.evicted += 1
        return True

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
        conn.deadline = self._clock() + self._write_timeout
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
