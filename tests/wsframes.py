"""WebSocket frames built byte by byte as a server (or, masked, a client) puts them on the wire, and read back."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


def frame(first: int, payload: bytes, *, mask: bytes = b"") -> bytes:
    """Any frame: ``first`` is the FIN/RSV/opcode byte; a 4-byte ``mask`` masks the payload as a client would."""
    return header(first, len(payload), masked=bool(mask)) + mask + _masked(payload, mask)


def header(first: int, size: int, *, masked: bool = False) -> bytes:
    """A frame header announcing ``size`` payload bytes (any size: the payload need never follow)."""
    bit = 0x80 if masked else 0
    if size < 126:
        return bytes([first, bit | size])
    if size < 1 << 16:
        return bytes([first, bit | 126]) + size.to_bytes(2, "big")
    return bytes([first, bit | 127]) + size.to_bytes(8, "big")


def server_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame as a server sends it."""
    return frame(0x81, payload)


def _masked(payload: bytes, mask: bytes) -> bytes:
    if not mask:
        return payload
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(len(payload), "big")


@dataclass(frozen=True)
class ClientFrame:
    """One frame a client sent, unmasked; ``masked`` says whether it was (RFC 6455: it must be)."""

    first: int
    payload: bytes
    masked: bool

    @property
    def opcode(self) -> int:
        return self.first & 0x0F


def parse_frames(data: bytes) -> tuple[list[ClientFrame], bytes]:
    """The whole frames at the start of ``data`` (masked or not) and the bytes left after them."""
    frames: list[ClientFrame] = []
    at = 0
    while len(data) - at >= 2:
        first, second = data[at], data[at + 1]
        size, start = second & 0x7F, at + 2
        if size == 126:
            size, start = int.from_bytes(data[at + 2 : at + 4], "big"), at + 4
        elif size == 127:
            size, start = int.from_bytes(data[at + 2 : at + 10], "big"), at + 10
        mask = b""
        if second & 0x80:
            mask, start = data[start : start + 4], start + 4
        if start + size > len(data):
            break
        frames.append(ClientFrame(first, _masked(data[start : start + size], mask), bool(mask)))
        at = start + size
    return frames, data[at:]


class Receiver(Protocol):
    def recv(self, timeout: float) -> object: ...


def next_item(conn: Receiver, timeout: float = 5.0) -> object:
    """The next message or close from ``conn.recv``, calling again after each None (a slice), within ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        item = conn.recv(left)
        if item is not None:
            return item
    raise AssertionError(f"no message within {timeout} s")
