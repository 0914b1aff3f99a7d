"""The worker's WebSocket receive side (bounded frame reader and fast path) over a socketpair, and the allocator."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from shardsync.worker import frames as frames_module
from shardsync.worker.connection import (
    Closed,
    Connection,
    ConnectionLost,
    MessageTooLarge,
    ProtocolViolation,
)
from shardsync.worker.frames import MAX_FRAGMENTS, FrameReader
from wsframes import ClientFrame, frame, header, next_item, parse_frames, server_frame

KIB = 1 << 10
Pair = tuple[Connection, socket.socket]


class Counted:
    """FrameReader.read, counted: the calls the fast path left to the full reader."""

    def __init__(self, reader: FrameReader) -> None:
        self.calls = 0
        self._read = reader.read

    def __call__(self, timeout: float) -> object:
        self.calls += 1
        return self._read(timeout)


def make_pair(**limits: int) -> tuple[Connection, socket.socket, Counted]:
    ours, theirs = socket.socketpair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # room for pongs nobody reads
    conn = Connection(ours, **limits)
    counted = Counted(conn._reader)
    conn._reader.read = counted  # type: ignore[method-assign]
    return conn, theirs, counted


@pytest.fixture
def pair() -> Iterator[tuple[Connection, socket.socket, Counted]]:
    conn, theirs, counted = make_pair()
    try:
        yield conn, theirs, counted
    finally:
        conn.abort()
        theirs.close()


def sent_by_client(server: socket.socket, count: int) -> list[ClientFrame]:
    """The first ``count`` frames the client sent, read from the server's end."""
    server.settimeout(5)
    data = b""
    while True:
        got, _ = parse_frames(data)
        if len(got) >= count:
            return got
        data += server.recv(65536)


def test_frames_of_every_length_class_arrive_whole_in_order_without_the_full_reader(pair: Pair) -> None:
    """Small, 16-bit and 64-bit length text frames already read come back intact and in order by the fast path."""
    conn, server, counted = pair
    payloads = [b"a[1]", b"a[" + b"7" * 300 + b"]", b"a[" + b"9" * 70_000 + b"]", b"h", b""]
    server.sendall(b"".join(server_frame(p) for p in payloads))
    assert next_item(conn) == payloads[0]  # the first read (of all of them) goes through the full reader
    calls = counted.calls
    assert [next_item(conn) for _ in payloads[1:]] == payloads[1:]
    assert counted.calls == calls  # none of the others needed it


def test_a_frame_split_across_reads_is_reassembled(pair: Pair) -> None:
    """A frame whose bytes straddle two kernel reads (header in one, payload in the next) arrives whole."""
    conn, server, _ = pair
    first, second = server_frame(b"a[" + b"1" * 500 + b"]"), server_frame(b"a[2]")
    data = first + second
    server.sendall(data[:1])  # half a header
    assert conn.recv(0.05) is None
    assert not conn.buffered()  # nothing parseable is waiting: the caller selects on the socket
    server.sendall(data[1:300])
    assert conn.recv(0.05) is None
    assert not conn.buffered()  # the partial payload left the read-ahead: select sees the rest arrive
    server.sendall(data[300:])
    assert next_item(conn) == b"a[" + b"1" * 500 + b"]"
    assert next_item(conn) == b"a[2]"


def test_a_receive_timeout_waits_and_loses_no_partial_frame(pair: Pair) -> None:
    """With nothing (or half a frame) to read, recv waits about the timeout, returns None, and the frame survives."""
    conn, server, _ = pair
    started = time.monotonic()
    assert conn.recv(0.2) is None
    assert time.monotonic() - started >= 0.15  # it waited
    data = server_frame(b"a[" + b"5" * 1000 + b"]")
    server.sendall(data[:600])
    assert conn.recv(0.1) is None
    server.sendall(data[600:])
    assert next_item(conn) == data[4:]


def test_the_timeout_is_a_deadline_for_the_whole_call(pair: Pair) -> None:
    """A server trickling a frame (a byte every 20 ms) cannot keep recv beyond its timeout: it is not per read."""
    conn, server, _ = pair
    data = server_frame(b"x" * 5000)
    stop = threading.Event()

    def trickle() -> None:
        for byte in data:
            if stop.wait(0.02):
                return
            server.send(bytes([byte]))

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        assert conn.recv(0.3) is None
        assert time.monotonic() - started < 0.3 + 0.1
    finally:
        stop.set()
        thread.join()


def test_end_of_stream_is_a_lost_connection(pair: Pair) -> None:
    """The peer closing the TCP stream after a frame: the frame arrives, then ConnectionLost."""
    conn, server, _ = pair
    server.sendall(server_frame(b"o"))
    server.shutdown(socket.SHUT_WR)
    assert next_item(conn) == b"o"
    with pytest.raises(ConnectionLost, match="closed the TCP connection"):
        next_item(conn)


def test_other_frames_between_text_frames_keep_their_order(pair: Pair) -> None:
    """Ping (answered with a pong), pong, fragments with a ping among them, binary and close keep the order."""
    conn, server, _ = pair
    server.sendall(
        server_frame(b"o")
        + frame(0x89, b"are you there")
        + server_frame(b"a[1]")
        + frame(0x01, b"a[2,")
        + frame(0x89, b"")  # a control frame between fragments is allowed
        + frame(0x00, b"3,")
        + frame(0x80, b"4]")
        + frame(0x8A, b"unsolicited pong")
        + frame(0x82, b"\x00binary")
        + server_frame(b"h")
        + frame(0x88, (1000).to_bytes(2, "big") + b"bye")
    )
    got = [next_item(conn) for _ in range(6)]
    assert got == [b"o", b"a[1]", b"a[2,3,4]", b"\x00binary", b"h", Closed(1000, "bye")]
    sent = sent_by_client(server, 2)
    assert all(f.masked for f in sent)
    assert sent[0].opcode == 0xA and sent[0].payload in (b"are you there", b"")  # pongs: one per slice at most
    assert sent[-1].opcode == 0x8 and sent[-1].payload[:2] == (1000).to_bytes(2, "big")  # the close answered


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (frame(0xC1, b"a[1]"), "reserved bits"),
        (frame(0x81, b"a[4]", mask=b"\x01\x02\x03\x04"), "masked"),
        (frame(0x83, b"?"), "reserved data opcode"),
        (frame(0x8B, b"?"), "reserved control opcode"),
        (frame(0x09, b"ping"), "fragmented or oversized control"),
        (frame(0x89, b"p" * 126), "fragmented or oversized control"),
        (frame(0x80, b"orphan"), "continuation frame without a message"),
        (frame(0x01, b"a[") + server_frame(b"a[2]"), "new message before the fragmented one ended"),
        (frame(0x01, b"a[") + frame(0x82, b"b"), "new message before the fragmented one ended"),
        (frame(0x88, b"\x03"), "1-byte payload"),
    ],
)
def test_frames_no_server_may_send_are_refused(pair: Pair, wire: bytes, match: str) -> None:
    """Reserved bits or opcodes, masking, bad control frames and fragment order end the connection (1002)."""
    conn, server, _ = pair
    server.sendall(server_frame(b"o") + wire)
    assert next_item(conn) == b"o"
    with pytest.raises(ProtocolViolation, match=match) as caught:
        next_item(conn)
    assert caught.value.code == 1002


def test_a_whole_text_frame_inside_a_fragmented_message_is_refused_by_the_fast_path_too() -> None:
    """A final text frame waiting in the read-ahead while a fragmented message is open is refused, not returned."""
    conn, server, _ = make_pair(slice_frames=1)  # the slice ends right after the first fragment
    try:
        server.sendall(frame(0x01, b"a[") + server_frame(b"a[2]"))
        assert conn.recv(1.0) is None and conn.buffered()
        with pytest.raises(ProtocolViolation, match="new message before the fragmented one ended"):
            next_item(conn)
    finally:
        conn.abort()
        server.close()


def test_an_oversized_frame_is_refused_from_its_header_alone(pair: Pair) -> None:
    """A header announcing 200 MiB raises MessageTooLarge although not one payload byte was sent."""
    conn, server, _ = pair
    server.sendall(server_frame(b"o") + header(0x81, 200 << 20))
    assert next_item(conn) == b"o"
    with pytest.raises(MessageTooLarge) as caught:
        next_item(conn)
    assert caught.value.size == 200 << 20 and caught.value.limit == 64 << 20 and caught.value.code == 1009


def test_a_frame_over_the_limit_wholly_read_is_refused_not_taken_by_the_fast_path() -> None:
    """With max_message_bytes 64 KiB, a whole 100 KB text frame in the read-ahead is refused, not returned."""
    conn, server, _ = make_pair(max_message_bytes=64 * KIB)
    try:
        server.sendall(server_frame(b"o") + server_frame(b"x" * 100_000))
        assert next_item(conn) == b"o"
        with pytest.raises(MessageTooLarge):
            next_item(conn)
    finally:
        conn.abort()
        server.close()


def test_fragments_adding_up_over_the_limit_are_refused_at_the_crossing_header() -> None:
    """A message whose fragments total more than max_message_bytes is refused at the fragment that crosses it."""
    conn, server, _ = make_pair(max_message_bytes=64 * KIB)
    try:
        server.sendall(frame(0x01, b"x" * 40_000) + frame(0x00, b"y" * 20_000) + header(0x80, 10_000))
        with pytest.raises(MessageTooLarge, match="fragmented message over 65536"):
            next_item(conn)
    finally:
        conn.abort()
        server.close()


def test_a_message_in_too_many_empty_fragments_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty fragments add nothing to a message's size, so their count is bounded (MAX_FRAGMENTS) instead."""
    monkeypatch.setattr(frames_module, "MAX_FRAGMENTS", 100)
    conn, server, _ = make_pair()
    try:
        server.sendall(frame(0x01, b"") + frame(0x00, b"") * 99 + frame(0x80, b"end"))
        with pytest.raises(MessageTooLarge, match="more than 100 fragments"):
            next_item(conn)
    finally:
        conn.abort()
        server.close()
    assert MAX_FRAGMENTS == 1 << 16


def test_a_ping_flood_is_handled_in_slices_with_one_pong_each() -> None:
    """1000 pings already read: each recv handles at most slice_frames of them, returns None, and sends one pong."""
    conn, server, _ = make_pair(slice_frames=100)
    try:
        server.sendall(b"".join(frame(0x89, str(i).encode()) for i in range(1000)) + server_frame(b"after"))
        results = []
        while (item := conn.recv(1.0)) is None or not isinstance(item, bytes):
            results.append(item)
        assert item == b"after"
        assert 10 <= len(results) <= 11  # 1000 pings / 100 per slice (the first read may stop earlier)
        pongs = sent_by_client(server, len(results))
        assert all(f.opcode == 0xA for f in pongs)
        assert pongs[-1].payload == b"999"  # each pong answers the latest ping of its slice
        assert conn.control_frames == 1000
    finally:
        conn.abort()
        server.close()


def test_a_large_message_is_read_in_byte_slices() -> None:
    """A 5 MB frame is returned after None slices of about slice_bytes each (never all in one call), intact."""
    conn, server, _ = make_pair(slice_bytes=256 * KIB)
    payload = bytes(range(256)) * (5_000_000 // 256)
    sender = threading.Thread(target=server.sendall, args=(frame(0x82, payload),))
    sender.start()
    try:
        nones = 0
        while (item := conn.recv(5.0)) is None:
            nones += 1
        assert item == payload
        # A slice stops once slice_bytes are used, overshooting by at most one kernel read (CHUNK).
        assert nones >= len(payload) // (256 * KIB + FrameReader.CHUNK) - 1
    finally:
        sender.join()
        conn.abort()
        server.close()


def test_a_frame_cut_by_a_timeout_is_never_mistaken_for_frames(pair: Pair) -> None:
    """After a timeout mid-frame the rest of it is never taken for a new frame, even when it looks like one."""
    conn, server, _ = pair
    payload = b"a[" + b"5" * 500 + b"\x81\x03abc" + b"6" * 500 + b"]"
    data = server_frame(payload) + server_frame(b"a[7]")
    cut = 4 + 2 + 500
    server.sendall(data[:cut])
    assert conn.recv(0.2) is None
    server.sendall(data[cut:])
    assert next_item(conn) == payload
    assert next_item(conn) == b"a[7]"


def test_close_sends_a_close_frame_and_waits_boundedly_for_the_servers(pair: Pair) -> None:
    """close() sends a masked 1000 close, returns when the server answers, and never waits beyond its timeout."""
    conn, server, _ = pair
    started = time.monotonic()
    conn.close(timeout=0.3)  # the server never answers
    assert 0.25 <= time.monotonic() - started < 1.0
    (sent,) = sent_by_client(server, 1)
    assert sent.opcode == 0x8 and sent.masked and sent.payload == (1000).to_bytes(2, "big")


def test_close_after_an_oversized_frame_says_1009_without_reading_on() -> None:
    """After MessageTooLarge, close() sends close code 1009 at once (the rest of the stream is not read)."""
    conn, server, _ = make_pair()
    try:
        server.sendall(header(0x81, 100 << 20) + b"x" * 100_000)
        with pytest.raises(MessageTooLarge):
            next_item(conn)
        started = time.monotonic()
        conn.close(timeout=5.0)
        assert time.monotonic() - started < 1.0
        (sent,) = sent_by_client(server, 1)
        assert sent.opcode == 0x8 and sent.payload == (1009).to_bytes(2, "big")
    finally:
        server.close()


def test_send_masks_text_frames(pair: Pair) -> None:
    """send() puts one final, masked text frame on the wire with the text as payload."""
    conn, server, _ = pair
    conn.send("[]")
    (sent,) = sent_by_client(server, 1)
    assert sent.first == 0x81 and sent.masked and sent.payload == b"[]"


def test_limits_below_a_16_bit_frame_are_rejected() -> None:
    """max_message_bytes under 64 KiB is a programming error (the fast path takes any 16-bit length frame)."""
    ours, theirs = socket.socketpair()
    try:
        with pytest.raises(ValueError, match="at least 65536"):
            Connection(ours, max_message_bytes=65535)
    finally:
        ours.close()
        theirs.close()


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
