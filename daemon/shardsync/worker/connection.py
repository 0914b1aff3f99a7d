"""One WebSocket connection on websocket-client's low-level class, selectable."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import Any, cast

import websocket
from websocket import ABNF


class ConnectionLost(Exception):
    """The socket failed or the server closed it."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        self.code = code
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class Closed:
    """A WebSocket close frame from the server."""

    code: int | None
    reason: str


#: First header byte of a final (FIN), extension-free text frame.
FINAL_TEXT = 0x81


class ReadAhead:
    """The connected socket, read in large chunks on behalf of websocket-client.

    websocket-client asks the kernel for each frame header and payload
    separately (two syscalls per frame); reading up to ``CHUNK`` bytes at once
    and serving its small reads from memory removes most syscalls, and tells
    the loop when whole frames are already waiting (no select needed).  The
    common frame it hands over itself (``take_text_frame``).
    """

    CHUNK = 1 << 18

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._tls = isinstance(sock, ssl.SSLSocket)
        # One chunk from the kernel and how far into it websocket-client has read.
        self._chunk = b""
        self._offset = 0

    def pending(self) -> int:
        """Bytes already read from the kernel (or TLS layer) and not yet consumed."""
        left = len(self._chunk) - self._offset
        return left + self._sock.pending() if self._tls else left  # type: ignore[attr-defined]

    def recv(self, size: int) -> bytes:
        chunk, offset = self._chunk, self._offset
        end = offset + size
        if end <= len(chunk):
            self._offset = end
            return chunk[offset:end]
        if offset < len(chunk):
            # The rest of the chunk: a short read, which websocket-client
            # completes with further calls (as with any socket).
            self._chunk, self._offset = b"", 0
            return chunk[offset:]
        chunk = self._sock.recv(self.CHUNK)
        if len(chunk) <= size:
            self._chunk, self._offset = b"", 0
            return chunk  # EOF (b"") included
        # Never hand back more than asked: websocket-client re-slices any excess
        # on every read, which is quadratic for large chunks.
        self._chunk, self._offset = chunk, size
        return chunk[:size]

    def take_text_frame(self) -> bytes | None:
        """The payload of the next frame if it is a whole, final, unmasked text frame already read; else None.

        That is nearly every frame a Tradovate server sends, and websocket-client
        spends about 10 us parsing each one in Python (its bare receive loop's
        limit); this takes about 1 us.  Anything else (a close, ping,
        fragment, binary or masked frame, RSV bits, a frame not yet wholly
        read) is left untouched for websocket-client to parse.

        The chunk's unread bytes always start at a frame boundary:
        websocket-client reads the socket (and so can time out) only once the
        chunk is used up, is never handed more than it asked for, and returns
        only whole messages; so a frame it is still receiving after a timeout
        never sits in the chunk for this to mistake its tail for a frame.
        """
        chunk, offset = self._chunk, self._offset
        size = len(chunk)
        if size - offset < 2 or chunk[offset] != FINAL_TEXT:
            return None
        length = chunk[offset + 1]
        if length < 126:
            start = offset + 2
        else:
            if length > 127:
                return None  # the mask bit: servers never mask, the library decides
            # 126: a 16-bit length follows; 127: a 64-bit one.
            start = offset + (4 if length == 126 else 10)
            if start > size:
                return None
            length = int.from_bytes(chunk[offset + 2 : start], "big")
        end = start + length
        if end > size:
            return None
        self._offset = end
        return chunk[start:end]

    def gettimeout(self) -> float | None:
        # websocket-client wraps each read in a closure with a select() retry
        # unless the timeout reads 0; that path exists for non-blocking sockets
        # only.  The real socket keeps the real timeout (settimeout reaches it
        # through __getattr__), so a read still waits at most that long and
        # raises socket.timeout, which websocket-client maps to
        # WebSocketTimeoutException as before.
        return 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def ssl_options(ca_file: str) -> dict[str, object]:
    """Verified TLS: system CAs, plus ``ca_file`` when given."""
    context = ssl.create_default_context(cafile=ca_file or None)
    return {"context": context}


class Connection:
    """Connect, wait for readability alongside other fds, receive whole frames."""

    def __init__(self, ws: Any) -> None:
        """Take over a connected websocket-client ``WebSocket`` (see ``open``)."""
        # websocket-client is only partly typed; this wrapper is the typed surface.
        self.ws = ws
        self._reader = ReadAhead(ws.sock)
        ws.sock = self._reader
        self._timeout: float | None = None

    @classmethod
    def open(cls, url: str, *, handshake_timeout: float, ca_file: str = "") -> Connection:
        """Connect (TCP, TLS for wss://, WebSocket handshake) within ``handshake_timeout``."""
        ws: Any = cast(Any, websocket.WebSocket)(skip_utf8_validation=True, enable_multithread=False)
        try:
            ws.connect(
                url,
                timeout=handshake_timeout,
                sslopt=ssl_options(ca_file) if url.startswith("wss:") else None,
                suppress_origin=True,
            )
        except (OSError, websocket.WebSocketException) as exc:
            ws.shutdown()
            raise ConnectionLost(f"connect to {url} failed: {exc}") from None
        return cls(ws)

    def fileno(self) -> int:
        return self._reader.fileno()  # type: ignore[no-any-return]

    def buffered(self) -> bool:
        """True when bytes were already read from the kernel but not yet by the frame reader."""
        return self._reader.pending() > 0

    def recv(self, timeout: float) -> bytes | Closed | None:
        """One complete data frame, a close, or None when ``timeout`` passed first.

        websocket-client keeps a partially received frame across timeouts, so
        a short timeout here never loses data.
        """
        text = self._reader.take_text_frame()
        if text is not None:
            return text
        timeout = max(timeout, 0.001)
        if timeout != self._timeout:
            # A setsockopt per frame is measurable; skip it when nothing changes.
            self._timeout = timeout
            self.ws.settimeout(timeout)
        try:
            opcode, data = self.ws.recv_data()
        except websocket.WebSocketTimeoutException:
            return None
        except (OSError, websocket.WebSocketException) as exc:
            raise ConnectionLost(f"receive failed: {type(exc).__name__}: {exc}") from None
        if opcode == ABNF.OPCODE_CLOSE:
            payload = data.data if isinstance(data, ABNF) else data
            code, reason = _close_status(payload if isinstance(payload, bytes) else b"")
            return Closed(code, reason)
        if opcode == ABNF.OPCODE_BINARY:
            return bytes(data)
        return data if isinstance(data, bytes) else bytes(data)

    def send(self, text: str) -> None:
        try:
            self.ws.send(text)
        except (OSError, websocket.WebSocketException) as exc:
            raise ConnectionLost(f"send failed: {type(exc).__name__}: {exc}") from None

    def close(self, timeout: float = 1.0) -> None:
        """Send a normal close frame and drop the socket, never blocking long."""
        try:
            if self.ws.connected:
                self.ws.close(status=websocket.STATUS_NORMAL, timeout=timeout)
        except (OSError, websocket.WebSocketException):
            pass
        finally:
            self.ws.shutdown()

    def abort(self) -> None:
        self.ws.shutdown()


def _close_status(payload: bytes) -> tuple[int | None, str]:
    if len(payload) < 2:
        return None, ""
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")


