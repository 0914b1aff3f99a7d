"""A bounded RFC 6455 client-side frame reader: every read limited in size, in time and in work per call.

The reader owns the socket's receive side.  It reads the kernel in large
chunks and parses frames from memory: whole, final text frames (nearly every
frame a Tradovate server sends) in about 1 us (:meth:`FrameReader.take_text_frame`),
everything else in :meth:`FrameReader.read`, which

- checks every header before reading its payload: reserved bits, a mask,
  unknown opcodes, bad control frames and fragment order are refused
  (:class:`ProtocolViolation`); a frame or a fragmented message over
  ``max_message_bytes`` is refused from its header alone
  (:class:`MessageTooLarge`), so memory stays near the limit whatever a
  header claims;
- does a bounded slice of work per call (about ``slice_bytes`` of payload,
  ``slice_frames`` frames that complete no message, the caller's timeout as
  a deadline for the whole call, not per read) and returns None when the
  slice ends without a complete message: so a ping flood, endless fragments
  or a huge message arriving slowly never hold the caller's loop;
- keeps the last ping's payload in :attr:`FrameReader.ping` for the caller
  to answer (RFC 6455 5.5.3 allows one pong for several pings).

Memory: a payload grows only as its bytes arrive (whatever its header
claims), and a complete message is joined once: at most about twice
``max_message_bytes`` plus one ``CHUNK``.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from typing import Final

from shardsync.worker.faults import ConnectionLost, MessageTooLarge, ProtocolViolation

__all__ = [
    "MAX_FRAGMENTS",
    "MAX_MESSAGE_BYTES",
    "SLICE_BYTES",
    "SLICE_FRAMES",
    "Closed",
    "FrameReader",
]

MAX_MESSAGE_BYTES: Final = 64 << 20
#: Payload bytes one ``read`` call moves (plus at most one kernel read): about a millisecond of copying.
SLICE_BYTES: Final = 1 << 20
#: Frames completing no message (pings, pongs, fragments) one ``read`` call handles at most.
SLICE_FRAMES: Final = 256
#: Fragments of one message at most (empty fragments add nothing to its size, but cost work forever).
MAX_FRAGMENTS: Final = 1 << 16
#: The smallest ``max_message_bytes``: every 16-bit length frame fits (the fast path relies on it).
MIN_MESSAGE_BYTES: Final = 1 << 16

#: First header byte of a final (FIN), extension-free text frame.
FINAL_TEXT: Final = 0x81
TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


@dataclass(frozen=True, slots=True)
class Closed:
    """A WebSocket close frame from the server."""

    code: int | None
    reason: str


class FrameReader:
    """The receive side of one client WebSocket (see the module docstring)."""

    CHUNK = 1 << 18

    def __init__(
        self,
        sock: socket.socket,
        *,
        initial: bytes = b"",
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        slice_bytes: int = SLICE_BYTES,
        slice_frames: int = SLICE_FRAMES,
    ) -> None:
        if max_message_bytes < MIN_MESSAGE_BYTES:
            raise ValueError(f"max_message_bytes must be at least {MIN_MESSAGE_BYTES}")
        if slice_bytes < 1 or slice_frames < 1:
            raise ValueError("slice_bytes and slice_frames must be positive")
        self._sock = sock
        self._tls = isinstance(sock, ssl.SSLSocket)
        self.max_message_bytes = max_message_bytes
        self._slice_bytes = slice_bytes
        self._slice_frames = slice_frames
        # One chunk from the kernel and how far into it frames were parsed.
        # Its unread bytes always start at a frame boundary, except while a
        # payload is incomplete: then they are all consumed (``_need`` > 0).
        self._chunk = initial
        self._offset = 0
        self._timeout: float | None = None
        # The frame whose payload is still arriving: header byte, bytes to come, pieces so far.
        self._first = 0
        self._need = 0
        self._pieces: list[bytes] = []
        # The fragmented message being assembled (None between messages).
        self._message: list[bytes] | None = None
        self._message_size = 0
        self._fragments = 0
        #: The payload of the latest ping not yet answered (the caller sends the pong and clears it).
        self.ping: bytes | None = None
        #: Frames that completed no message (control frames, fragments): liveness without a message.
        self.control_frames = 0

    def pending(self) -> int:
        """Bytes already read from the kernel (or TLS layer) that can be parsed without reading more.

        0 when only part of a frame header is there: then the rest has to
        come from the kernel, and a select on the socket sees it arrive.
        """
        left = len(self._chunk) - self._offset
        if left < 10 and not self._header_complete():
            left = 0
        return left + self._sock.pending() if self._tls else left  # type: ignore[attr-defined]

    def take_text_frame(self) -> bytes | None:
        """The payload of the next frame if it is a whole, final, unmasked text frame already read; else None.

        Anything else (another kind of frame, one not wholly read, a text
        frame while a fragmented message is open) is left for :meth:`read`.
        """
        chunk, offset = self._chunk, self._offset
        size = len(chunk)
        if size - offset < 2 or chunk[offset] != FINAL_TEXT or self._message is not None:
            return None
        length = chunk[offset + 1]
        if length < 126:
            start = offset + 2
        elif length == 126:
            # 16-bit length: at most 65535, below any allowed max_message_bytes.
            start = offset + 4
            if start > size:
                return None
            length = int.from_bytes(chunk[offset + 2 : start], "big")
        elif length == 127:
            start = offset + 10
            if start > size:
                return None
            length = int.from_bytes(chunk[offset + 2 : start], "big")
            if length > self.max_message_bytes:
                return None  # read() refuses it
        else:
            return None  # the mask bit: read() refuses it
        end = start + length
        if end > size:
            return None
        self._offset = end
        return chunk[start:end]

    def read(self, timeout: float) -> bytes | Closed | None:
        """The next message or close frame, or None when this call's slice ended first.

        The slice ends after ``timeout`` seconds (a deadline for the whole
        call), ``slice_bytes`` payload bytes (overshooting by at most one
        kernel read of ``CHUNK``) or ``slice_frames`` frames that complete
        nothing.  A partial frame or message is kept for the next call.
        Raises :class:`ConnectionLost` (or a subclass) when the stream is unusable.
        """
        budget, frames = self._slice_bytes, self._slice_frames
        deadline = 0.0
        while True:
            # Parse as far as the bytes already read allow.
            while budget > 0 and frames > 0:
                if not self._need and not self._parse_header():
                    break  # the next header is not all here
                budget -= self._take_payload()
                if self._need:
                    break  # nor is the rest of this payload
                item = self._finish()
                if item is not None:
                    return item
                frames -= 1
            else:
                return None  # the slice is used up: the caller's loop gets its turn
            # Wait for more bytes, within this call's time.
            if not deadline:
                deadline = time.monotonic() + timeout
                wait = max(timeout, 0.001)
            else:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return None
            if not self._fill(wait):
                return None

    # --- internals ------------------------------------------------------------------

    def _header_complete(self) -> bool:
        chunk, offset = self._chunk, self._offset
        if len(chunk) - offset < 2:
            return False
        length = chunk[offset + 1] & 0x7F
        size = 2 if length < 126 else 4 if length == 126 else 10
        return len(chunk) - offset >= size

    def _parse_header(self) -> bool:
        """Consume the next frame header (validated) if it is all here; True when one was consumed."""
        if not self._header_complete():
            return False
        chunk, offset = self._chunk, self._offset
        first, second = chunk[offset], chunk[offset + 1]
        if first & 0x70:
            raise ProtocolViolation("frame with reserved bits set (no extension was negotiated)")
        if second & 0x80:
            raise ProtocolViolation("masked frame from the server")
        length = second & 0x7F
        size = 2
        if length == 126:
            size, length = 4, int.from_bytes(chunk[offset + 2 : offset + 4], "big")
        elif length == 127:
            size, length = 10, int.from_bytes(chunk[offset + 2 : offset + 10], "big")
        self._check(first, length)
        self._offset = offset + size
        self._first, self._need, self._pieces = first, length, []
        return True

    def _check(self, first: int, length: int) -> None:
        """Refuse a frame from its header alone: before any of its payload is read."""
        opcode = first & 0x0F
        if opcode >= CLOSE:
            if opcode not in (CLOSE, PING, PONG):
                raise ProtocolViolation(f"reserved control opcode {opcode:#x}")
            if not first & 0x80 or length > 125:
                raise ProtocolViolation("fragmented or oversized control frame")
            return
        limit = self.max_message_bytes
        if opcode == CONTINUATION:
            if self._message is None:
                raise ProtocolViolation("continuation frame without a message to continue")
            total = self._message_size + length
            if total > limit:
                raise MessageTooLarge(f"fragmented message over {limit} bytes (at least {total})", total, limit)
            if self._fragments >= MAX_FRAGMENTS:
                raise MessageTooLarge(f"message in more than {MAX_FRAGMENTS} fragments", total, limit)
            return
        if opcode not in (TEXT, BINARY):
            raise ProtocolViolation(f"reserved data opcode {opcode:#x}")
        if self._message is not None:
            raise ProtocolViolation("new message before the fragmented one ended")
        if length > limit:
            raise MessageTooLarge(f"frame of {length} bytes announced, over {limit}", length, limit)

    def _take_payload(self) -> int:
        """Move the current frame's payload bytes already read into its pieces; how many were moved."""
        chunk, offset = self._chunk, self._offset
        take = min(len(chunk) - offset, self._need)
        if take:
            self._pieces.append(chunk[offset : offset + take])
            self._offset = offset + take
            self._need -= take
        return take

    def _finish(self) -> bytes | Closed | None:
        """The frame is complete: a message or close to return, or None (control frame, fragment)."""
        first, pieces = self._first, self._pieces
        self._pieces = []
        payload = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        opcode = first & 0x0F
        final = first & 0x80
        if opcode == CONTINUATION:
            assert self._message is not None
            if payload:
                self._message.append(payload)
            self._message_size += len(payload)
            self._fragments += 1
            if not final:
                self.control_frames += 1
                return None
            message, self._message = self._message, None
            self._message_size = self._fragments = 0
            return b"".join(message)
        if opcode in (TEXT, BINARY):
            if final:
                return payload
            self._message = [payload] if payload else []
            self._message_size, self._fragments = len(payload), 1
            self.control_frames += 1
            return None
        if opcode == CLOSE:
            return _closed(payload)
        if opcode == PING:
            self.ping = payload
        self.control_frames += 1
        return None

    def _fill(self, wait: float) -> bool:
        """Append one kernel read, waiting at most ``wait`` seconds; False when nothing came in time."""
        if wait != self._timeout:
            # A setsockopt per read is measurable; skip it when nothing changes.
            self._timeout = wait
            self._sock.settimeout(wait)
        try:
            data = self._sock.recv(self.CHUNK)
        except TimeoutError:
            return False
        except OSError as exc:
            raise ConnectionLost(f"receive failed: {type(exc).__name__}: {exc}") from None
        if not data:
            raise ConnectionLost("the server closed the TCP connection")
        rest = len(self._chunk) - self._offset
        # Only a partial header (under 10 bytes) is ever carried over: payloads move to pieces.
        self._chunk = self._chunk[self._offset :] + data if rest else data
        self._offset = 0
        return True


def _closed(payload: bytes) -> Closed:
    if not payload:
        return Closed(None, "")
    if len(payload) == 1:
        raise ProtocolViolation("close frame with a 1-byte payload")
    return Closed(int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace"))
