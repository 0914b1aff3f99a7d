"""One client WebSocket, selectable: a bounded handshake, a bounded frame reader, websocket-client's framing for sends.

The receive side is :class:`shardsync.worker.frames.FrameReader` (every read
limited in size, time and work per call), the opening is
:func:`shardsync.worker.handshake.open_socket` (one deadline, no redirects,
a capped response head); websocket-client only builds and masks the frames
this client sends.
"""

from __future__ import annotations

import contextlib
import socket
import time

from websocket import ABNF

from shardsync.worker.faults import ConnectionLost, HandshakeFailed, MessageTooLarge, ProtocolViolation
from shardsync.worker.frames import MAX_MESSAGE_BYTES, SLICE_BYTES, SLICE_FRAMES, Closed, FrameReader
from shardsync.worker.handshake import MAX_HEADER_BYTES, open_socket

__all__ = [
    "MAX_MESSAGE_BYTES",
    "SLICE_BYTES",
    "SLICE_FRAMES",
    "Closed",
    "Connection",
    "ConnectionLost",
    "HandshakeFailed",
    "MessageTooLarge",
    "ProtocolViolation",
]

NORMAL_CLOSURE = 1000


class Connection:
    """Connect, wait for readability alongside other fds, receive whole messages in bounded slices."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        initial: bytes = b"",
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        slice_bytes: int = SLICE_BYTES,
        slice_frames: int = SLICE_FRAMES,
    ) -> None:
        """Take over a connected, upgraded socket and the bytes already read after the server's handshake."""
        self._sock = sock
        self._reader = FrameReader(
            sock, initial=initial, max_message_bytes=max_message_bytes, slice_bytes=slice_bytes,
            slice_frames=slice_frames,
        )
        self._close_sent = False
        # Set once the reader failed: its stream position is lost, only a close frame may still go out.
        self._fault: ConnectionLost | None = None

    @classmethod
    def open(
        cls,
        url: str,
        *,
        handshake_timeout: float,
        ca_file: str = "",
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        slice_bytes: int = SLICE_BYTES,
        slice_frames: int = SLICE_FRAMES,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> Connection:
        """Connect (TCP, TLS for wss:// verified against the system CAs plus ``ca_file``, the HTTP upgrade).

        The whole of it, headers included, within ``handshake_timeout``; a
        redirect is a :class:`HandshakeFailed` (never followed) naming the
        status and the Location's host.
        """
        try:
            sock, initial = open_socket(
                url, timeout=handshake_timeout, ca_file=ca_file, max_header_bytes=max_header_bytes
            )
        except HandshakeFailed as exc:
            raise HandshakeFailed(
                f"connect to {url} failed: {exc}", status=exc.status, location_host=exc.location_host
            ) from None
        return cls(
            sock, initial=initial, max_message_bytes=max_message_bytes, slice_bytes=slice_bytes,
            slice_frames=slice_frames,
        )

    def fileno(self) -> int:
        return self._sock.fileno()

    def buffered(self) -> bool:
        """True when bytes were already read from the kernel but not yet parsed (select would not see them)."""
        return self._reader.pending() > 0

    @property
    def control_frames(self) -> int:
        """Frames received that completed no message (pings, pongs, fragments): liveness without a message."""
        return self._reader.control_frames

    def recv(self, timeout: float) -> bytes | Closed | None:
        """One complete message (text or binary payload), a close, or None when this call's slice ended first.

        None means: no complete message within ``timeout`` seconds (a
        deadline for the whole call), or after a bounded slice of work
        (``slice_bytes`` of frame bytes, ``slice_frames`` pings, pongs or
        fragments), whichever came first; a partial frame or message is kept
        for the next call.  So a flood never holds the caller: after None it
        sends what is due and calls again.  A ping is answered with a pong
        (one for the pings of a slice).  Raises :class:`ConnectionLost`
        (:class:`MessageTooLarge`, :class:`ProtocolViolation`) when the
        connection is unusable.
        """
        reader = self._reader
        text = reader.take_text_frame()
        if text is not None:
            return text
        if self._fault is not None:
            raise self._fault
        try:
            item = reader.read(timeout)
        except ConnectionLost as exc:
            self._fault = exc
            raise
        if reader.ping is not None:
            payload, reader.ping = reader.ping, None
            self._send_frame(payload, ABNF.OPCODE_PONG)
        if type(item) is Closed:
            # Answer the close (RFC 6455 5.5.1); the caller then drops the socket.
            with contextlib.suppress(ConnectionLost):
                self._send_close(NORMAL_CLOSURE)
        return item

    def send(self, text: str) -> None:
        self._send_frame(text.encode(), ABNF.OPCODE_TEXT)

    def close(self, timeout: float = 1.0) -> None:
        """Send a close frame, wait at most ``timeout`` for the server's (reading boundedly), drop the socket."""
        try:
            if not self._close_sent:
                code = self._fault.code if self._fault is not None and self._fault.code else NORMAL_CLOSURE
                self._send_close(code)
                # After a fault the reader raises it again at once: the wait ends there.
                self._await_close(timeout)
        except ConnectionLost:
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the socket at once."""
        with contextlib.suppress(OSError):
            self._sock.close()

    def _await_close(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self._reader.take_text_frame() is not None:
                continue
            if type(self._reader.read(left)) is Closed:
                return

    def _send_close(self, code: int) -> None:
        self._close_sent = True
        self._send_frame(code.to_bytes(2, "big"), ABNF.OPCODE_CLOSE)

    def _send_frame(self, payload: bytes, opcode: int) -> None:
        data = ABNF.create_frame(payload, opcode).format()
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise ConnectionLost(f"send failed: {type(exc).__name__}: {exc}") from None
