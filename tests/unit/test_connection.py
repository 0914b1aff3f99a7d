"""The worker's read-ahead socket under websocket-client, and the allocator thresholds it relies on."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
import websocket

from shardsync.worker.connection import ReadAhead


def server_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame as a server sends it."""
    size = len(payload)
    if size < 126:
        header = bytes([0x81, size])
    elif size < 1 << 16:
        header = bytes([0x81, 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x81, 127]) + size.to_bytes(8, "big")
    return header + payload


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
