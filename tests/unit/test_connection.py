"""The worker's read-ahead socket and frame fast path under websocket-client, and the allocator thresholds."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
import websocket

from shardsync.worker.connection import Closed, Connection, ConnectionLost, ReadAhead
from wsframes import frame, server_frame

Pair = tuple[websocket.WebSocket, socket.socket]


@pytest.fixture
def pair() -> Iterator[Pair]:
    ours, theirs = socket.socketpair()
    ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=False)
    ws.sock = ReadAhead(ours)
    ws.connected = True
    try:
        yield ws, theirs
    finally:
        ours.close()
        theirs.close()


def test_frames_of_every_length_class_arrive_whole_and_in_order(pair: Pair) -> None:
    """Small, 16-bit and 64-bit length frames read from one kernel chunk come back intact and in order."""
    ws, server = pair
    payloads = [b"a[1]", b"a[" + b"7" * 300 + b"]", b"a[" + b"9" * 70_000 + b"]", b"h"]
    server.sendall(b"".join(server_frame(p) for p in payloads))
    ws.settimeout(5)
    assert [ws.recv_data()[1] for _ in payloads] == payloads


def test_a_frame_split_across_chunks_is_reassembled(pair: Pair) -> None:
    """A frame whose bytes straddle two kernel reads (a short read from the buffer) still arrives whole."""
    ws, server = pair
    first, second = server_frame(b"a[" + b"1" * 500 + b"]"), server_frame(b"a[2]")
    data = first + second
    server.sendall(data[:300])
    ws.settimeout(5)
    reader = ws.sock
    assert isinstance(reader, ReadAhead)
    assert reader.recv(2) == data[:2]  # header, leaving the rest of the 300 bytes buffered
    assert reader.pending() == 298
    server.sendall(data[300:])
    rest = bytearray()
    while len(rest) < len(data) - 2:
        rest += reader.recv(len(data) - 2 - len(rest))
    assert bytes(rest) == data[2:]
    assert reader.pending() == 0


def test_a_receive_timeout_waits_and_loses_no_partial_frame(pair: Pair) -> None:
    """With nothing (or half a frame) to read, recv waits about the timeout, raises, and the frame survives."""
    ws, server = pair
    ws.settimeout(0.2)
    started = time.monotonic()
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv_data()
    assert time.monotonic() - started >= 0.15  # it waited: the reported 0 timeout is not a non-blocking read
    frame = server_frame(b"a[" + b"5" * 1000 + b"]")
    server.sendall(frame[:600])
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv_data()
    server.sendall(frame[600:])
    assert ws.recv_data()[1] == frame[2 + 2:]


def test_end_of_stream_is_reported_as_a_closed_connection(pair: Pair) -> None:
    """The peer closing the TCP stream surfaces as websocket-client's connection-closed error."""
    ws, server = pair
    server.sendall(server_frame(b"o"))
    server.shutdown(socket.SHUT_WR)
    ws.settimeout(5)
    assert ws.recv_data()[1] == b"o"
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        ws.recv_data()


class Counted:
    """websocket-client's recv_data, counted: the frames the fast path left to the library."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        self.calls = 0
        self._recv_data = ws.recv_data

    def __call__(self, *args: object) -> object:
        self.calls += 1
        return self._recv_data(*args)


ConnPair = tuple[Connection, socket.socket, Counted]


@pytest.fixture
def conn_pair() -> Iterator[ConnPair]:
    ours, theirs = socket.socketpair()
    ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=False)
    ws.sock = ours
    ws.connected = True
    counted = Counted(ws)
    ws.recv_data = counted  # type: ignore[method-assign]
    try:
        yield Connection(ws), theirs, counted
    finally:
        ours.close()
        theirs.close()


def test_whole_text_frames_skip_the_library_parser(conn_pair: ConnPair) -> None:
    """Final unmasked text frames of every length class already read come back whole, in order, without recv_data."""
    conn, server, counted = conn_pair
    payloads = [b"a[1]", b"a[" + b"7" * 300 + b"]", b"a[" + b"9" * 70_000 + b"]", b"h", b""]
    server.sendall(b"".join(server_frame(p) for p in payloads))
    # The first frame of a chunk is read (and parsed) by websocket-client; the rest wait in the chunk.
    assert conn.recv(5) == payloads[0]
    assert counted.calls == 1
    received = [conn.recv(5) for _ in payloads[1:]]
    assert received == payloads[1:]
    assert counted.calls == 1


def test_other_frames_between_text_frames_go_to_the_library(conn_pair: ConnPair) -> None:
    """Ping (answered with a pong), fragments, binary, masked and close frames among text frames keep their order."""
    conn, server, counted = conn_pair
    server.sendall(
        server_frame(b"o")
        + frame(0x89, b"are you there")  # ping
        + server_frame(b"a[1]")
        + frame(0x01, b"a[2,")  # text, not final
        + frame(0x80, b"3]")  # final continuation
        + frame(0x82, b"\x00binary")
        + frame(0x81, b"a[4]", mask=b"\x01\x02\x03\x04")
        + server_frame(b"h")
        + frame(0x88, (1000).to_bytes(2, "big") + b"bye")
    )
    got = [conn.recv(5) for _ in range(7)]
    assert got == [b"o", b"a[1]", b"a[2,3]", b"\x00binary", b"a[4]", b"h", Closed(1000, "bye")]
    # The library parsed "o" (the chunk's first frame), the ping (and "a[1]" in the same call), the
    # fragments, the binary, the masked frame and the close; only "h" took the fast path.
    assert counted.calls == 6
    server.settimeout(5)
    pong = server.recv(1024)
    assert pong[0] == 0x8A  # websocket-client answered the ping it parsed


def test_a_frame_with_reserved_bits_is_still_refused(conn_pair: ConnPair) -> None:
    """A text frame with RSV1 set (an extension nobody negotiated) ends the connection, as websocket-client rules."""
    conn, server, _ = conn_pair
    server.sendall(server_frame(b"o") + frame(0xC1, b"a[1]"))
    assert conn.recv(5) == b"o"
    with pytest.raises(ConnectionLost, match="rsv"):
        conn.recv(5)


def test_a_frame_cut_by_a_timeout_is_finished_by_the_library(conn_pair: ConnPair) -> None:
    """After a timeout mid-frame the rest of it is never taken for a new frame, even when it looks like one."""
    conn, server, counted = conn_pair
    # The payload's second half starts with bytes that read as a whole text frame "abc".
    payload = b"a[" + b"5" * 500 + b"\x81\x03abc" + b"6" * 500 + b"]"
    data = server_frame(payload) + server_frame(b"a[7]")
    cut = 4 + 2 + 500
    server.sendall(data[:cut])
    assert conn.recv(0.2) is None
    server.sendall(data[cut:])
    assert conn.recv(5) == payload
    assert conn.recv(5) == b"a[7]"
    # Both halves went through websocket-client; the next frame, left in the chunk, did not.
    assert counted.calls == 2


def test_freed_batch_memory_stays_in_the_heap() -> None:
    """After keep_freed_memory, an 8 MiB block is served from the heap and kept there once freed (glibc)."""
    script = textwrap.dedent(
        """
        import ctypes, sys
        from shardsync.worker.allocator import keep_freed_memory

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                "keepcost")]

        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = (ctypes.c_void_p,)
        libc.mallinfo2.restype = MallInfo2
        if sys.argv[1] == "tuned":
            assert keep_freed_memory()
        block = libc.malloc(8 << 20)
        mapped = libc.mallinfo2().hblkhd
        libc.free(block)
        print(mapped, libc.mallinfo2().arena)
        """
    )
    tuned = subprocess.run([sys.executable, "-c", script, "tuned"], capture_output=True, text=True, check=True)
    default = subprocess.run([sys.executable, "-c", script, "default"], capture_output=True, text=True, check=True)
    tuned_mapped, tuned_heap = map(int, tuned.stdout.split())
    default_mapped, _ = map(int, default.stdout.split())
    assert default_mapped >= 8 << 20  # glibc's default: a fresh mmap, unmapped again on free
    assert tuned_mapped < 8 << 20 and tuned_heap >= 8 << 20  # tuned: from the heap, still there after free
