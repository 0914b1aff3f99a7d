"""Every message between the parent and its workers, and their framing on a pipe.

A frame is a 4-byte big-endian length followed by an orjson object whose
``"t"`` names the message type.  Messages stay far below ``PIPE_BUF`` so a
single ``write`` is atomic.  Secrets (the token) travel only here.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar, Final

import orjson

from shardsync.clip import clip

MAX_FRAME: Final = 1 << 20
#: Server text carried in a message (``last_error``, a refusal's reason) is clipped to this:
#: no message can outgrow its frame, whatever a server answers.
MAX_TEXT: Final = 300
#: Upper bounds (seconds) of the sink commit latency histogram every worker reports (plus +Inf).
COMMIT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_HEADER = struct.Struct(">I")


class IPCError(Exception):
    """A malformed or oversized frame on a parent/worker pipe."""


class ShardState(StrEnum):
    """Every state a shard can be in: the worker's own (in its heartbeats) and the parent's phases.

    Worker states, in the order of a session: ``starting`` -> ``waiting_token`` ->
    ``waiting_permit`` -> ``connecting`` -> ``authorizing`` -> ``syncing`` -> ``live``;
    ``backoff`` between sessions, ``stopping`` on the way out.  The parent's phases
    while no worker speaks for the shard: ``starting`` (forked, no heartbeat yet),
    ``backoff`` (restart scheduled), ``parked`` (crash loop), ``hung`` (being killed),
    ``stopping``, ``exited`` (nothing scheduled) and ``stopped`` (daemon shutdown).
    """

    STARTING = "starting"
    WAITING_TOKEN = "waiting_token"  # noqa: S105 - a state name, not a secret
    WAITING_PERMIT = "waiting_permit"
    CONNECTING = "connecting"
    AUTHORIZING = "authorizing"
    SYNCING = "syncing"
    LIVE = "live"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    PARKED = "parked"
    HUNG = "hung"
    EXITED = "exited"
    STOPPED = "stopped"


# --- worker -> parent ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First message of a worker: who it is."""

    TYPE: ClassVar[str] = "hello"
    remainder: int
    pid: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sent from the worker's own loop every ``heartbeat_interval`` seconds.

    ``busy_for`` announces a blocking step (a handshake, a large commit) that
    may delay the next heartbeat by that many seconds.  Times named ``*_at``
    are wall-clock epoch seconds; the process figures (RSS, CPU seconds, open
    fds) are the worker's own, read from /proc.  ``commits`` counts committed
    batches by latency: one cumulative count per :data:`COMMIT_BUCKETS` bound
    and a last one for +Inf, with ``commit_seconds`` their sum.
    """

    TYPE: ClassVar[str] = "heartbeat"
    state: ShardState
    connected_since: float | None
    last_frame_age: float | None
    frames: int
    events: int
    entities: int
    reconnects: int
    last_error: str | None
    busy_for: float = 0.0
    rss_bytes: int = 0
    cpu_seconds: float = 0.0
    open_fds: int = 0
    last_event_at: float | None = None
    last_commit_at: float | None = None
    snapshot_seconds: float | None = None
    commits: tuple[int, ...] = ()
    commit_seconds: float = 0.0
    quarantined: int = 0
    unattributed: int = 0
    sink_errors: int = 0
    #: Wall clock when the sink became unreachable (an outage in progress, ``worker/outage.py``); None: reachable.
    sink_down_at: float | None = None

    def __post_init__(self) -> None:
        # Decoded from JSON the state is a plain string (an unknown one is a
        # malformed message) and the counts a list.
        object.__setattr__(self, "state", ShardState(self.state))
        object.__setattr__(self, "commits", tuple(self.commits))
        if self.last_error is not None and len(self.last_error) > MAX_TEXT:
            object.__setattr__(self, "last_error", clip(self.last_error, MAX_TEXT))


@dataclass(frozen=True, slots=True)
class NeedToken:
    """The worker's authorize was refused (401): it needs a fresh token."""

    TYPE: ClassVar[str] = "need_token"
    rejected: str  # a short fingerprint of the refused token, never the token


@dataclass(frozen=True, slots=True)
class NeedPermit:
    """The worker wants to (re)connect and waits for a connect permit."""

    TYPE: ClassVar[str] = "need_permit"


@dataclass(frozen=True, slots=True)
class Rejected:
    """The server refused a request that retrying on a new socket will not fix by itself.

    ``endpoint`` is ``authorize`` (any refusal but 401, which is :class:`NeedToken`)
    or ``user/syncrequest`` (any 4xx/5xx but 429, which is :class:`Throttled`);
    ``text`` is the server's reason, clipped.  The parent counts them per shard
    and parks a shard that keeps being refused (a configuration error).
    """

    TYPE: ClassVar[str] = "rejected"
    endpoint: str
    status: int
    text: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", clip(self.text, MAX_TEXT))


@dataclass(frozen=True, slots=True)
class Throttled:
    """The server said to slow down for the whole API user, not just this socket.

    ``reason``: ``ws429`` (a 429 answer), ``quota`` (a ConnectionQuotaReached or
    IPQuotaReached shutdown) or ``captcha`` (a p-captcha answer).  The parent
    pauses every shard's new handshakes (it holds the connect permits) for
    ``lockout_backoff`` or ``captcha_backoff``.
    """

    TYPE: ClassVar[str] = "throttled"
    reason: str
    endpoint: str
    text: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", clip(self.text, MAX_TEXT))


# --- parent -> worker ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    """The current access token, sent at start and after every renewal."""

    TYPE: ClassVar[str] = "token"
    value: str
    expires_at: float

    def __repr__(self) -> str:
        return f"Token(value='***', expires_at={self.expires_at!r})"


@dataclass(frozen=True, slots=True)
class Permit:
    """Permission to open one connection now."""

    TYPE: ClassVar[str] = "permit"


@dataclass(frozen=True, slots=True)
class Stop:
    """Close the session cleanly, flush the sink and exit."""

    TYPE: ClassVar[str] = "stop"


Message = Hello | Heartbeat | NeedToken | NeedPermit | Rejected | Throttled | Token | Permit | Stop

_TYPES: Final[dict[str, type[Any]]] = {
    cls.TYPE: cls for cls in (Hello, Heartbeat, NeedToken, NeedPermit, Rejected, Throttled, Token, Permit, Stop)
}


def encode(message: Message) -> bytes:
    """One frame holding ``message``."""
    body = orjson.dumps({"t": message.TYPE, **asdict(message)})
    if len(body) > MAX_FRAME:
        raise IPCError(f"{message.TYPE} message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


def decode(body: bytes) -> Message:
    """The message in one frame body (without its length header)."""
    try:
        raw = orjson.loads(body)
        cls = _TYPES[raw.pop("t")]
        names = {f.name for f in fields(cls)}
        if set(raw) != names:
            raise IPCError(f"{cls.TYPE} message has fields {sorted(raw)}, expected {sorted(names)}")
        message: Message = cls(**raw)
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise IPCError(f"malformed IPC message: {exc}") from None
    return message


class Reader:
    """Accumulates bytes from a non-blocking pipe and yields whole messages."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()
        self.eof = False

    def read(self) -> list[Message]:
        """Drain what the pipe holds now; sets ``eof`` when the writer is gone."""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.EPIPE, errno.ECONNRESET):
                    self.eof = True
                    break
                raise
            if not chunk:
                self.eof = True
                break
            self._buffer += chunk
            if len(chunk) < 65536:
                break
        return self._split()

    def _split(self) -> list[Message]:
        messages: list[Message] = []
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            if size > MAX_FRAME:
                raise IPCError(f"IPC frame of {size} bytes exceeds {MAX_FRAME}")
            end = _HEADER.size + size
            if len(self._buffer) < end:
                break
            messages.append(decode(bytes(self._buffer[_HEADER.size : end])))
            del self._buffer[:end]
        return messages


def send(fd: int, message: Message, *, block: bool = True) -> bool:
    """Write one message; False when the other side is gone (EPIPE).

    With ``block=False`` a full pipe also gives False and nothing is written
    (frames are below PIPE_BUF, so a non-blocking write is all or nothing):
    the parent must never stall on a stopped or wedged worker.
    """
    frame = encode(message)
    view = memoryview(frame)
    try:
        while view:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                if not block:
                    return False
                # The reader is slow; a short blocking wait keeps the frame whole.
                os.set_blocking(fd, True)
                try:
                    written = os.write(fd, view)
                finally:
                    os.set_blocking(fd, False)
            view = view[written:]
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True
