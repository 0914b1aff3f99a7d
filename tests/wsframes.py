"""WebSocket frames built byte by byte, as a server (or, masked, a client) puts them on the wire."""

from __future__ import annotations


def frame(first: int, payload: bytes, *, mask: bytes = b"") -> bytes:
    """Any frame: ``first`` is the FIN/RSV/opcode byte; a 4-byte ``mask`` masks the payload as a client would."""
    size = len(payload)
    masked = 0x80 if mask else 0
    if size < 126:
        header = bytes([first, masked | size])
    elif size < 1 << 16:
        header = bytes([first, masked | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([first, masked | 127]) + size.to_bytes(8, "big")
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + payload


def server_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame as a server sends it."""
    return frame(0x81, payload)
