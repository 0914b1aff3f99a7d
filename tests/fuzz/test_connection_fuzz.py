"""Property test for the worker's frame reader: any frame mix, cut anywhere, any slice bounds, arrives as sent."""

from __future__ import annotations

import contextlib
import itertools
import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardsync.worker.connection import Closed, Connection, ConnectionLost, MessageTooLarge, ProtocolViolation
from wsframes import frame, header, parse_frames

LIMIT = 1 << 17  # max_message_bytes in these runs: 128 KiB
KINDS = ("text", "fragmented", "binary", "ping", "pong", "empty")
payloads = st.binary(max_size=300) | st.sampled_from([b"", b"x" * 125, b"x" * 126, b"y" * 65_535, b"z" * 70_000])
#: How a stream may end: a close, or a frame the reader must refuse (and which exception it raises).
ENDINGS = {
    "close": (frame(0x88, (1000).to_bytes(2, "big") + b"done"), None),
    "close-empty": (frame(0x88, b""), None),
    "masked": (frame(0x81, b"a[1]", mask=b"\x0f\xf0\x55\xaa"), ProtocolViolation),
    "rsv": (frame(0xC1, b"a[1]"), ProtocolViolation),
    "opcode": (frame(0x83, b"?"), ProtocolViolation),
    "oversize": (header(0x81, LIMIT + 1), MessageTooLarge),
    "huge": (header(0x82, 200 << 20), MessageTooLarge),
    "fragments-over": (frame(0x01, b"f" * 70_000) + header(0x80, LIMIT - 70_000 + 1), MessageTooLarge),
    "orphan-continuation": (frame(0x80, b"?"), ProtocolViolation),
    "eof": (b"", ConnectionLost),
}


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, bytes, list[int], list[bytes]]:
    """One message kind, its payload, fragment cut points, and the control frames between its fragments."""
    kind = draw(st.sampled_from(KINDS))
    payload = draw(payloads)
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    between = draw(st.lists(st.sampled_from([b"", b"p", b"q" * 125]), max_size=len(cuts)))
    return kind, payload, cuts, between


def wire(kind: str, payload: bytes, cuts: list[int], between: list[bytes]) -> tuple[bytes, bytes | None]:
    """The frame(s) for one message, and what the receiver must get for it (None: nothing)."""
    if kind == "text":
        return frame(0x81, payload), payload
    if kind == "binary":
        return frame(0x82, payload), payload
    if kind == "ping":
        return frame(0x89, payload[:125]), None
    if kind == "pong":
        return frame(0x8A, payload[:125]), None
    if kind == "empty":
        return frame(0x81, b""), b""
    # Fragmented: a first frame, continuations at ``cuts``, pings between them, a final continuation.
    pieces = [payload[a:b] for a, b in itertools.pairwise([0, *cuts, len(payload)])]
    out = frame(0x01, pieces[0])
    for i, piece in enumerate(pieces[1:]):
        if i < len(between):
            out += frame(0x89, between[i])
        out += frame(0x80 if i == len(pieces) - 2 else 0x00, piece)
    if len(pieces) == 1:
        out += frame(0x80, b"")
    return out, payload


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(messages(), min_size=1, max_size=10),
    ending=st.sampled_from(sorted(ENDINGS)),
    cuts=st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=6),
    slice_bytes=st.sampled_from([1, 100, 4096, 1 << 20]),
    slice_frames=st.sampled_from([1, 2, 256]),
)
def test_any_frames_cut_anywhere_arrive_whole_and_in_order(
    items: list[tuple[str, bytes, list[int], list[bytes]]], ending: str, cuts: list[float], slice_bytes: int,
    slice_frames: int,
) -> None:
    """Every frame kind, sent in pieces cut at arbitrary bytes with timeouts and slices between, comes out as sent.

    Pings are answered (masked pongs echo a ping that was sent), and the
    stream's ending (a close or a frame that must be refused) gives exactly
    the Closed or the exception expected, after every message before it.
    """
    stream = b""
    expected: list[bytes | Closed] = []
    pings: set[bytes] = set()
    for kind, payload, fragment_cuts, between in items:
        frames, received = wire(kind, payload, fragment_cuts, between)
        stream += frames
        if received is not None:
            expected.append(received)
        if kind == "ping":
            pings.add(payload[:125])
        if kind == "fragmented":
            pings.update(between[: len(fragment_cuts)])
    tail, error = ENDINGS[ending]
    stream += tail
    if ending == "close":
        expected.append(Closed(1000, "done"))
    elif ending == "close-empty":
        expected.append(Closed(None, ""))
    points = sorted({int(cut * len(stream)) for cut in cuts} | {0, len(stream)})

    ours, theirs = socket.socketpair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # room for the pongs read at the end
    try:
        conn = Connection(ours, max_message_bytes=LIMIT, slice_bytes=slice_bytes, slice_frames=slice_frames)
        got: list[bytes | Closed] = []
        raised: BaseException | None = None
        theirs.setblocking(False)
        try:
            for start, end in itertools.pairwise(points):
                piece = memoryview(stream)[start:end]
                while True:
                    # As much of the piece as the socket takes, then everything
                    # that can be received from it: the last receive times out
                    # (maybe mid-frame), as in the worker's loop.
                    with contextlib.suppress(BlockingIOError):
                        piece = piece[theirs.send(piece) :]
                    while (item := conn.recv(0.005)) is not None or conn.buffered():
                        if item is not None:
                            got.append(item)
                    if not piece:
                        break
            if ending == "eof":
                theirs.shutdown(socket.SHUT_WR)
            # Whatever is left: the ending must show within a few quiet receives.
            for _ in range(200):
                item = conn.recv(0.01)
                if item is not None:
                    got.append(item)
                elif not conn.buffered() and error is None:
                    break
        except ConnectionLost as exc:
            raised = exc
        assert got == expected
        assert type(raised) is error if error is not None else raised is None
        theirs.setblocking(True)
        theirs.settimeout(0.05)
        replies = b""
        with contextlib.suppress(TimeoutError):
            while chunk := theirs.recv(1 << 20):
                replies += chunk
        sent, rest = parse_frames(replies)
        assert not rest and all(f.masked for f in sent)
        assert {f.payload for f in sent if f.opcode == 0xA} <= pings
        if error is None:  # a refused frame may end the slice its pings were in before their pong
            assert bool(pings) == any(f.opcode == 0xA for f in sent)
    finally:
        ours.close()
        theirs.close()
