"""Property test for the worker's frame fast path: any frame mix, cut anywhere, arrives as sent."""

from __future__ import annotations

import contextlib
import itertools
import socket

import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardsync.worker.connection import Closed, Connection
from wsframes import frame

KINDS = ("text", "fragmented", "binary", "ping", "masked")
payloads = st.binary(max_size=300) | st.sampled_from([b"x" * 126, b"y" * 65_535, b"z" * 70_000])


def wire(kind: str, payload: bytes) -> tuple[bytes, bytes | None]:
    """The frame(s) for one message, and what the worker must receive for it (None: nothing)."""
    if kind == "text":
        return frame(0x81, payload), payload
    if kind == "fragmented":
        half = len(payload) // 2
        return frame(0x01, payload[:half]) + frame(0x80, payload[half:]), payload
    if kind == "binary":
        return frame(0x82, payload), payload
    if kind == "ping":
        return frame(0x89, payload[:125]), None
    return frame(0x81, payload, mask=b"\x0f\xf0\x55\xaa"), payload


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(st.tuples(st.sampled_from(KINDS), payloads), min_size=1, max_size=12),
    cuts=st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=6),
)
def test_any_frames_cut_anywhere_arrive_whole_and_in_order(
    messages: list[tuple[str, bytes]], cuts: list[float]
) -> None:
    """Frames of every kind, sent in pieces cut at arbitrary bytes with receive timeouts between, come out as sent."""
    stream = b""
    expected: list[bytes | Closed] = []
    for kind, payload in messages:
        frames, received = wire(kind, payload)
        stream += frames
        if received is not None:
            expected.append(received)
    stream += frame(0x88, (1000).to_bytes(2, "big"))
    expected.append(Closed(1000, ""))
    points = sorted({int(cut * len(stream)) for cut in cuts} | {0, len(stream)})

    ours, theirs = socket.socketpair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # room for the pongs we never read
    try:
        ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=False)
        ws.sock, ws.connected = ours, True
        conn = Connection(ws)
        got: list[bytes | Closed] = []
        theirs.setblocking(False)
        for start, end in itertools.pairwise(points):
            piece = memoryview(stream)[start:end]
            while True:
                # As much of the piece as the socket takes, then everything
                # that can be received from it: the last receive times out
                # (maybe mid-frame), as in the worker's loop.
                with contextlib.suppress(BlockingIOError):
                    piece = piece[theirs.send(piece) :]
                while (item := conn.recv(0.005)) is not None:
                    got.append(item)
                if not piece:
                    break
        assert got == expected
    finally:
        ours.close()
        theirs.close()
