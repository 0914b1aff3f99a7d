"""Unit tests for the parent/worker pipe messages: framing, size limit, malformed input, EOF, sending."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import struct
import tempfile
from collections.abc import Iterator

import orjson
import pytest

from shardsync import ipc
from shardsync.ipc import MAX_FRAME, IPCError, ShardState

BEAT = ipc.Heartbeat(
    state=ShardState.LIVE,
    connected_since=1.5,
    last_frame_age=0.25,
    frames=10,
    events=7,
    entities=3,
    reconnects=1,
    last_error=None,
    busy_for=2.0,
)
EVERY_MESSAGE: list[ipc.Message] = [
    ipc.Hello(remainder=3, pid=1234),
    BEAT,
    ipc.NeedToken(rejected="ab12cd34"),
    ipc.NeedPermit(),
    ipc.Rejected(endpoint="user/syncrequest", status=400, text="unknown entityTypes: bogus"),
    ipc.Throttled(reason="ws429", endpoint="user/syncrequest", text=""),
    ipc.Token(value="secret-token", expires_at=1700000000.5),
    ipc.Permit(),
    ipc.Stop(),
]


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def token_with_body_size(size: int) -> ipc.Token:
    """A Token whose encoded body is exactly ``size`` bytes (padded through its value, the one unclipped text)."""
    base = len(ipc.encode(ipc.Token(value="", expires_at=1.0))) - 4
    message = ipc.Token(value="x" * (size - base), expires_at=1.0)
    assert len(ipc.encode(message)) - 4 == size
    return message


def _fields(beat: ipc.Heartbeat) -> dict[str, object]:
    return dataclasses.asdict(beat)


# --- encode / decode ---------------------------------------------------------------


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: m.TYPE)
def test_every_message_round_trips_through_a_pipe(pipe: tuple[int, int], message: ipc.Message) -> None:
    """Each message type, sent and read back through a pipe, is equal to what was sent."""
    r, w = pipe
    assert ipc.send(w, message)
    [read] = ipc.Reader(r).read()
    assert read == message and type(read) is type(message)


def test_a_decoded_heartbeat_carries_a_shard_state() -> None:
    """A heartbeat's state comes back as the ShardState enum, not a bare string."""
    decoded = ipc.decode(ipc.encode(BEAT)[4:])
    assert isinstance(decoded, ipc.Heartbeat) and decoded.state is ShardState.LIVE


def test_the_token_is_masked_in_its_repr() -> None:
    """A Token's repr never shows the token itself."""
    token = ipc.Token(value="secret-token", expires_at=1.0)
    assert "secret-token" not in repr(token) and "***" in repr(token)


def test_encode_accepts_a_body_of_exactly_max_frame_and_refuses_one_byte_more() -> None:
    """MAX_FRAME is the largest body encode writes; one byte more is refused before anything is sent."""
    assert len(ipc.encode(token_with_body_size(MAX_FRAME))) == 4 + MAX_FRAME
    with pytest.raises(IPCError, match="exceeds"):
        ipc.encode(token_with_body_size(MAX_FRAME + 1))


def test_send_refuses_an_oversized_message_and_writes_nothing(pipe: tuple[int, int]) -> None:
    """An oversized message raises IPCError in send and leaves the pipe empty."""
    r, w = pipe
    with pytest.raises(IPCError):
        ipc.send(w, token_with_body_size(MAX_FRAME + 1))
    with pytest.raises(BlockingIOError):
        os.read(r, 1)


@pytest.mark.parametrize(
    "body",
    [b"", b"{not json", b"\xff\xfe", b"[1]", b'"hello"', b"7", b"null", b"{}", b'{"t":1}', b'{"t":null}'],
)
def test_malformed_bodies_raise_ipc_error(body: bytes) -> None:
    """Bodies that are not JSON, not an object, or have no usable type raise IPCError and nothing else."""
    with pytest.raises(IPCError, match="malformed"):
        ipc.decode(body)


def test_unknown_message_type_is_refused() -> None:
    """A type name no message has is a malformed message."""
    with pytest.raises(IPCError, match="malformed"):
        ipc.decode(b'{"t":"reboot"}')


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({"t": "hello", "remainder": 1}, "pid"),
        ({"t": "hello", "remainder": 1, "pid": 2, "extra": 3}, "extra"),
        ({"t": "token", "value": "x"}, "expires_at"),
        ({"t": "stop", "now": True}, "now"),
        ({"t": "heartbeat", **{k: v for k, v in _fields(BEAT).items() if k != "busy_for"}}, "busy_for"),
    ],
)
def test_missing_or_extra_fields_are_refused(raw: dict[str, object], names: str) -> None:
    """A message with a field missing (defaulted ones too) or one too many raises IPCError naming the fields."""
    with pytest.raises(IPCError, match=names):
        ipc.decode(orjson.dumps(raw))


def test_a_heartbeat_with_an_unknown_state_is_refused() -> None:
    """A state the ShardState enum does not know makes the heartbeat malformed."""
    raw = {"t": "heartbeat", **_fields(BEAT), "state": "dancing"}
    with pytest.raises(IPCError, match="malformed"):
        ipc.decode(orjson.dumps(raw))


# --- the reader: framing over a pipe -------------------------------------------------------


def test_a_frame_split_across_reads_is_assembled(pipe: tuple[int, int]) -> None:
    """Bytes of one frame arriving in pieces (inside the header, then the body) make one message once complete."""
    r, w = pipe
    data = ipc.encode(ipc.Hello(remainder=5, pid=99))
    reader = ipc.Reader(r)
    os.write(w, data[:2])
    assert reader.read() == []
    os.write(w, data[2:7])
    assert reader.read() == []
    os.write(w, data[7:-1])
    assert reader.read() == []
    os.write(w, data[-1:])
    assert reader.read() == [ipc.Hello(remainder=5, pid=99)]
    assert not reader.eof


def test_several_frames_in_one_read_come_out_in_order(pipe: tuple[int, int]) -> None:
    """Frames written back to back, the last one incomplete, give the whole ones in order and keep the rest."""
    r, w = pipe
    stream = b"".join(ipc.encode(m) for m in EVERY_MESSAGE)
    tail = ipc.encode(ipc.Permit())
    os.write(w, stream + tail[:3])
    reader = ipc.Reader(r)
    assert reader.read() == EVERY_MESSAGE
    os.write(w, tail[3:])
    assert reader.read() == [ipc.Permit()]


def test_an_oversized_length_header_is_refused_before_its_body_arrives(pipe: tuple[int, int]) -> None:
    """A header announcing more than MAX_FRAME bytes raises IPCError at once, without waiting for the body."""
    r, w = pipe
    os.write(w, struct.pack(">I", MAX_FRAME + 1) + b"{")
    with pytest.raises(IPCError, match="exceeds"):
        ipc.Reader(r).read()


def test_a_frame_of_exactly_max_frame_is_read() -> None:
    """The reader takes a body of exactly MAX_FRAME bytes, arriving over many reads."""
    message = token_with_body_size(MAX_FRAME)
    with tempfile.TemporaryFile() as file:
        file.write(ipc.encode(message))
        file.flush()
        file.seek(0)
        reader = ipc.Reader(file.fileno())
        got: list[ipc.Message] = []
        while not reader.eof:
            got += reader.read()
    assert got == [message]


def test_a_malformed_frame_in_the_stream_raises(pipe: tuple[int, int]) -> None:
    """A complete frame whose body is not a message makes the reader raise IPCError."""
    r, w = pipe
    os.write(w, frame(b'{"t":"permit","x":1}'))
    with pytest.raises(IPCError):
        ipc.Reader(r).read()


def test_eof_is_reported_once_the_writer_is_gone(pipe: tuple[int, int]) -> None:
    """Messages written before the writer closed are delivered, then eof is set; a torn frame is not a message."""
    r, w = pipe
    reader = ipc.Reader(r)
    assert reader.read() == [] and not reader.eof  # empty but open: no EOF
    os.write(w, ipc.encode(ipc.Stop()) + ipc.encode(ipc.Permit())[:3])
    os.close(w)
    messages: list[ipc.Message] = []
    for _ in range(2):  # a short read returns at once; the next one finds the end (the fd stays readable)
        messages += reader.read()
        if reader.eof:
            break
    assert messages == [ipc.Stop()] and reader.eof
    assert reader.read() == [] and reader.eof


def test_a_closed_read_end_counts_as_eof() -> None:
    """Reading a descriptor that is already closed (EBADF) is reported as EOF, not raised."""
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    reader = ipc.Reader(r)
    assert reader.read() == [] and reader.eof


# --- sending ---------------------------------------------------------------------------------


def test_send_reports_a_gone_reader_as_false(pipe: tuple[int, int]) -> None:
    """Sending into a pipe whose reader is closed returns False (EPIPE), it does not raise."""
    r, w = pipe
    os.close(r)
    assert ipc.send(w, ipc.Stop()) is False


def test_non_blocking_send_into_a_full_pipe_writes_nothing(pipe: tuple[int, int]) -> None:
    """With block=False a full pipe gives False and no byte of the frame: the stream stays whole."""
    r, w = pipe
    os.set_blocking(w, False)
    filled = 0
    try:
        while True:
            filled += os.write(w, b"\0" * 4096)
    except BlockingIOError:
        pass
    assert ipc.send(w, ipc.Stop(), block=False) is False
    drained = 0
    try:
        while chunk := os.read(r, 65536):
            drained += len(chunk)
    except BlockingIOError:
        pass
    assert drained == filled


@pytest.mark.parametrize("make", [
    lambda text: ipc.Heartbeat(**{**_fields(BEAT), "last_error": text}),
    lambda text: ipc.Rejected(endpoint="authorize", status=500, text=text),
    lambda text: ipc.Throttled(reason="captcha", endpoint="authorize", text=text),
])
def test_server_text_is_clipped_so_no_message_can_outgrow_its_frame(make: object) -> None:
    """A 2 MB server error page in a heartbeat or a refusal is clipped to MAX_TEXT printable characters."""
    message = make("\x00<html>" + "x" * 2_000_000)  # type: ignore[operator]
    text = message.last_error if isinstance(message, ipc.Heartbeat) else message.text
    assert len(text) <= ipc.MAX_TEXT + 1 and text.isprintable()
    assert len(ipc.encode(message)) < 4096
    assert ipc.decode(ipc.encode(message)[4:]) == message


def test_a_heartbeat_carries_the_latency_histogram_as_a_tuple() -> None:
    """commits (a list on the worker's side) comes back from the pipe as a tuple of counts."""
    beat = ipc.Heartbeat(**{**_fields(BEAT), "commits": [1, 2, 3], "rss_bytes": 10})
    decoded = ipc.decode(ipc.encode(beat)[4:])
    assert isinstance(decoded, ipc.Heartbeat) and decoded.commits == (1, 2, 3) and decoded.rss_bytes == 10
