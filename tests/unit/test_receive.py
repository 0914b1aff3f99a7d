"""Unit tests for one read pass: what it returns with its receive time, where it stops, and its deadlines."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import time
from collections.abc import Iterator

import pytest
import structlog

from shardsync import ipc, protocol
from shardsync.protocol import HeartbeatFrame, PropsEvent, ProtocolError
from shardsync.worker.connection import Closed, Connection, ConnectionLost
from shardsync.worker.parent import ParentLink, Stopping, Vitals
from shardsync.worker.receive import Receiver
from wsframes import frame, server_frame


def props(ident: int) -> bytes:
    return b'{"e":"props","d":{"entityType":"order","eventType":"Updated","entity":{"id":%d}}}' % ident


def messages(*idents: int) -> bytes:
    return server_frame(b"a[" + b",".join(props(i) for i in idents) + b"]")


class Rig:
    """A Receiver over one end of a socket pair, a real ParentLink on a pipe, and a clock that can jump ahead."""

    def __init__(self, *, idle_timeout: float = 10.0) -> None:
        ours, self.server = socket.socketpair()
        self.conn = Connection(ours)
        self.inbox_r, self.inbox_w = os.pipe()
        self.selector = selectors.DefaultSelector()
        self.sent: list[ipc.Message] = []
        self.offset = 0.0
        self.vitals = Vitals()
        self.link = ParentLink(
            self.inbox_r,
            self._send,
            self.selector,
            vitals=self.vitals,
            heartbeat_interval=60.0,
            permits=False,
            clock=self.clock,
            log=structlog.get_logger(),
        )
        self.link.next_beat = self.clock() + 60.0
        self.stamps = 0
        self.receiver = Receiver(
            self.conn,
            self.selector,
            self.link,
            self.vitals,
            idle_timeout=idle_timeout,
            clock=self.clock,
            now_iso=self.now_iso,
        )

    def clock(self) -> float:
        return time.monotonic() + self.offset

    def now_iso(self) -> str:
        self.stamps += 1
        return f"t{self.stamps}"

    def _send(self, message: ipc.Message) -> bool:
        self.sent.append(message)
        return True

    def soon(self, seconds: float = 5.0) -> float:
        return self.clock() + seconds

    def close(self) -> None:
        self.receiver.detach()
        self.selector.close()
        self.conn.abort()
        self.server.close()
        for fd in (self.inbox_r, self.inbox_w):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def test_a_pass_returns_every_message_already_here_with_one_receive_time(rig: Rig) -> None:
    """Frames that arrived together come back decoded, in order, with the time the pass read them."""
    rig.server.sendall(messages(1) + server_frame(b"h") + messages(2, 3))
    received_at, got = rig.receiver.read(100, rig.soon())
    assert received_at == "t1"
    assert [type(m) for m in got] == [PropsEvent, HeartbeatFrame, PropsEvent, PropsEvent]
    assert [m.entities[0]["id"] for m in got if isinstance(m, PropsEvent)] == [1, 2, 3]
    assert rig.vitals.frames == 3


def test_nothing_read_returns_no_time_at_the_quiet_deadline(rig: Rig) -> None:
    """With no input, the pass returns empty and without a receive time once the quiet deadline comes."""
    start = rig.clock()
    assert rig.receiver.read(100, start + 0.05) == ("", [])
    assert rig.clock() >= start + 0.05 and rig.stamps == 0 and rig.vitals.frames == 0
    # Not at a later deadline: the client heartbeat is due only 2.5 s after connecting.
    assert rig.clock() < start + 1.5


def test_a_pass_ends_when_nothing_more_is_buffered(rig: Rig) -> None:
    """Once the frames already here are taken, the pass returns at once instead of waiting for its deadline."""
    rig.server.sendall(messages(1))
    start = rig.clock()
    _, got = rig.receiver.read(100, start + 5.0)
    assert len(got) == 1 and rig.clock() < start + 2.5


def test_a_pass_stops_at_the_room_left_in_the_batch(rig: Rig) -> None:
    """A pass takes no more messages than the batch has room for; the rest come in the next pass, with its own time."""
    rig.server.sendall(b"".join(messages(i) for i in range(5)))
    first_at, first = rig.receiver.read(2, rig.soon())
    second_at, second = rig.receiver.read(100, rig.soon())
    assert (len(first), len(second)) == (2, 3)
    assert (first_at, second_at) == ("t1", "t2")


def test_message_bytes_are_counted_and_a_byte_room_ends_the_pass(rig: Rig) -> None:
    """bytes_read adds up every message's payload; a pass stops once it read ``byte_room`` bytes (one message over)."""
    frames = [messages(i) for i in range(4)]
    payload = len(frames[0]) - 2  # a 2-byte frame header (payloads under 126 bytes)
    rig.server.sendall(b"".join(frames))
    _, first = rig.receiver.read(100, rig.soon(), payload + 1)
    assert len(first) == 2 and rig.receiver.bytes_read == 2 * payload
    _, rest = rig.receiver.read(100, rig.soon())
    assert len(rest) == 2 and rig.receiver.bytes_read == 4 * payload


def test_a_close_ends_the_list_after_what_came_before(rig: Rig) -> None:
    """A close frame is the last item of its pass, after the messages that preceded it."""
    rig.server.sendall(messages(1) + frame(0x88, (1000).to_bytes(2, "big") + b"bye") + messages(2))
    _, got = rig.receiver.read(100, rig.soon())
    assert isinstance(got[0], PropsEvent) and got[1:] == [Closed(1000, "bye")]


def test_an_undecodable_frame_ends_the_list_and_later_frames_wait(rig: Rig) -> None:
    """A malformed frame is the last item (a ProtocolError); frames after it stay for the next pass."""
    rig.server.sendall(messages(1) + server_frame(b"a[{") + messages(2))
    _, got = rig.receiver.read(100, rig.soon())
    assert isinstance(got[0], PropsEvent) and isinstance(got[1], ProtocolError) and len(got) == 2
    _, rest = rig.receiver.read(100, rig.soon())
    assert [m.entities[0]["id"] for m in rest] == [2]


def test_frames_refresh_the_last_frame_time(rig: Rig) -> None:
    """Reading a frame moves last_frame_at to the time of the read."""
    before = rig.vitals.last_frame_at
    assert before is not None
    rig.offset += 1.0
    rig.server.sendall(server_frame(b"h"))
    rig.receiver.read(100, rig.soon())
    assert rig.vitals.last_frame_at is not None and rig.vitals.last_frame_at >= before + 1.0


def test_a_silent_socket_is_cut_off_after_idle_timeout() -> None:
    """No frame for idle_timeout seconds: the pass returns at that deadline, the next one declares the socket lost."""
    rig = Rig(idle_timeout=0.05)
    try:
        assert rig.receiver.read(100, None) == ("", [])
        with pytest.raises(ConnectionLost, match=r"no frame for 0\.05 s"):
            rig.receiver.read(100, None)
    finally:
        rig.close()


def test_frames_waiting_after_a_busy_spell_are_read_not_taken_for_silence(rig: Rig) -> None:
    """Frames that arrived while the worker was busy longer than idle_timeout are read, not taken for silence."""
    rig.server.sendall(server_frame(b"h") + messages(7))
    rig.offset += 11.0  # a commit longer than the 10 s idle_timeout, the frames waiting in the socket meanwhile
    _, got = rig.receiver.read(100, rig.soon())
    assert [type(m) for m in got] == [HeartbeatFrame, PropsEvent]


def test_after_a_busy_spell_silence_is_counted_from_the_return() -> None:
    """Back from a spell longer than idle_timeout with nothing waiting, the socket gets one more idle window of
    listening, and is cut off after it."""
    rig = Rig(idle_timeout=0.05)
    try:
        rig.offset += 1.0  # away (busy) for 20 idle windows
        assert rig.receiver.read(100, None) == ("", [])  # listened for one window: nothing
        with pytest.raises(ConnectionLost, match=r"no frame for 0\.05 s"):
            rig.receiver.read(100, None)
    finally:
        rig.close()


def test_the_client_heartbeat_is_sent_when_due(rig: Rig) -> None:
    """A quarter second before HEARTBEAT_INTERVAL has passed (not earlier), the pass sends the client's "[]"
    (a masked text frame) first, so a pass that ends late still keeps the server's 2.5 s cadence."""
    rig.server.setblocking(False)
    rig.receiver.read(100, rig.clock())
    rig.offset += protocol.HEARTBEAT_INTERVAL - 0.3
    rig.vitals.last_frame_at = rig.clock()  # not idle
    rig.receiver.read(100, rig.clock())
    with pytest.raises(BlockingIOError):
        rig.server.recv(64)
    rig.offset += 0.05
    rig.vitals.last_frame_at = rig.clock()  # not idle
    rig.receiver.read(100, rig.clock())
    sent = rig.server.recv(64)
    assert sent[0] == 0x81 and sent[1] == 0x80 | 2
    mask = sent[2:6]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(sent[6:])) == b"[]"


def test_the_parent_heartbeat_is_sent_when_due(rig: Rig) -> None:
    """A pass sends the heartbeat to the parent when it is due, from the session's own loop."""
    rig.receiver.read(100, rig.clock())
    assert rig.sent == []
    rig.link.next_beat = rig.clock()
    rig.receiver.read(100, rig.clock())
    assert [type(m) for m in rig.sent] == [ipc.Heartbeat]


def test_parent_input_is_served_while_a_pass_waits(rig: Rig) -> None:
    """A Stop arriving while the pass waits for the socket ends the pass with Stopping."""
    ipc.send(rig.inbox_w, ipc.Stop())
    with pytest.raises(Stopping):
        rig.receiver.read(100, rig.soon())


def test_waiting_tells_whether_more_input_is_here(rig: Rig) -> None:
    """waiting() is False on a quiet socket and True once bytes are readable."""
    assert not rig.receiver.waiting()
    rig.server.sendall(server_frame(b"h"))
    assert rig.receiver.waiting()


def test_detach_takes_the_socket_out_of_the_selector(rig: Rig) -> None:
    """After detach only the parent's fds remain registered (detaching twice is harmless)."""
    rig.receiver.detach()
    rig.receiver.detach()
    assert [key.fd for key in rig.selector.get_map().values()] == [rig.inbox_r]
