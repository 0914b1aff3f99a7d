"""One read pass of a session: wait for input or the next deadline, then take the frames already here.

The deadlines of a connected worker are few and all kept here or read from
their owners: the client ``[]`` (due every 2.25 s), the heartbeat to the parent, the
idle cut-off (a socket silent while the worker listens is dead), and the session's own next deadline
(an answer due, a penalty's resend, the snapshot's quiet rule and bounds,
provisional deletions, the freshness row).  What a pass read comes back with
the time it was read, so the receive time travels with its messages; the
bytes of every message read are counted (:attr:`Receiver.bytes_read`), which
is what bounds a snapshot's size.
"""

from __future__ import annotations

import contextlib
import selectors
import time
from collections.abc import Callable
from typing import Any, Final

from shardsync import protocol
from shardsync.protocol import MessagesFrame, ProtocolError
from shardsync.worker.connection import Closed, Connection, ConnectionLost
from shardsync.worker.parent import ParentLink, Vitals

#: A pass with no byte bound.
NO_BYTE_LIMIT = 1 << 62
#: The client ``[]`` goes out this often: Tradovate asks for one every 2.5 s, and a pass that ends
#: late (a commit, a busy machine) must still land inside that, so it is due a quarter second early.
PING_EVERY: Final = protocol.HEARTBEAT_INTERVAL - 0.25

#: A gap this long between two passes is the worker's own work, not time it listened (the idle cut-off).
AWAY: Final = 1.0

#: What a pass read: its receive time (ISO-8601 UTC, "" when nothing was read) and the
#: decoded messages, in order; a close or an undecodable frame is the last item
#: (a Closed or a ProtocolError), so the messages before it are still handled.
Received = tuple[str, list[Any]]


class Receiver:
    """Reads one open connection on the session's behalf; registers it in the selector until detached."""

    def __init__(
        self,
        conn: Connection,
        selector: selectors.BaseSelector,
        link: ParentLink,
        vitals: Vitals,
        *,
        idle_timeout: float,
        clock: Callable[[], float],
        now_iso: Callable[[], str],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._conn = conn
        self._selector = selector
        self._link = link
        self._vitals = vitals
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._now_iso = now_iso
        self._wall = wall
        # By fd: websocket-client forgets its socket object once it is shut down.
        self._fd = conn.fileno()
        selector.register(self._fd, selectors.EVENT_READ, None)
        now = clock()
        vitals.last_frame_at = now
        self._next_ping = now + PING_EVERY
        self._control_seen = conn.control_frames
        #: Payload bytes of every message read on this connection.
        self.bytes_read = 0
        # When the last pass returned, and since when the worker has listened without a long absence.
        self._returned_at = self._listening_since = now

    def read(self, room: int, due: float | None, byte_room: int = NO_BYTE_LIMIT) -> Received:
        """Wait for the next deadline or input; return what was read meanwhile.

        ``room`` is how many more changes the pending batch takes and
        ``due`` the session's own next deadline, if it has one.  Once the
        socket is readable, every frame already read ahead is taken in the
        same pass (up to ``room`` messages or ``byte_room`` bytes, or until
        the next deadline), so sink writes are batched under load and
        immediate when traffic is light.
        """
        conn, clock = self._conn, self._clock
        deadline = self._tick(due)
        if conn.buffered():
            # The parent's fds are served in every pass, even while a flood keeps
            # the read-ahead full: Stop, Token and Permit must never wait for it.
            self.poll(0.0)
        elif not self.poll(max(0.0, deadline - clock())):
            self._returned_at = clock()
            return "", []
        received_at = self._now_iso()
        # One timeout for the whole pass: it bounds the wait for the rest of a
        # frame, and an unchanged value costs no setsockopt.
        timeout = max(0.001, deadline - clock())
        decode = protocol.decode_frame
        messages: list[Any] = []
        frames = 0
        size = 0
        while True:
            frame = conn.recv(timeout)
            if frame is None:
                break
            frames += 1
            if isinstance(frame, Closed):
                # Whatever came before the close (a shutdown event, say) is handled first.
                messages.append(frame)
                break
            size += len(frame)
            try:
                decoded = decode(frame)
            except ProtocolError as exc:
                messages.append(exc)
                break
            if type(decoded) is MessagesFrame:
                messages += decoded.messages
            else:
                messages.append(decoded)
            if len(messages) >= room or size >= byte_room or not conn.buffered() or clock() >= deadline:
                break
        if frames:
            self._vitals.frames += frames
            self.bytes_read += size
        # Any frame is liveness, pings and fragments too (they complete no message).
        control = conn.control_frames
        if frames or control != self._control_seen:
            self._control_seen = control
            self._vitals.last_frame_at = clock()
            self._vitals.last_event_at = self._wall()
        self._returned_at = clock()
        return received_at, messages

    def waiting(self) -> bool:
        """True when more input is here already: read ahead, or readable right now."""
        return self._conn.buffered() or self.poll(0.0)

    def poll(self, timeout: float) -> bool:
        """Select on the socket and the parent's fds (served at once); True when the socket is readable."""
        ws_ready = False
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                ws_ready = True
            else:
                key.data()
        return ws_ready

    def detach(self) -> None:
        """Take the socket out of the selector (before the connection is closed)."""
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._fd)

    def _tick(self, due: float | None) -> float:
        """Run what is due (client ``[]``, heartbeat, idle check); return the next deadline."""
        now = self._clock()
        if now >= self._next_ping:
            self._conn.send(protocol.HEARTBEAT)
            self._next_ping = now + PING_EVERY
        if now - self._returned_at >= AWAY:
            # Away (a million-entity snapshot's commit): what the server sent meanwhile waits unread, so its
            # silence counts from now.  Only the worker's own work makes a gap; trickled bytes never do.
            self._listening_since = now
        last_frame_at = self._vitals.last_frame_at
        assert last_frame_at is not None
        quiet_since = max(last_frame_at, self._listening_since)
        if now - quiet_since >= self._idle_timeout:
            # A silent socket is a dead one (the server sends "h" every 2.5 s).
            raise ConnectionLost(f"no frame for {self._idle_timeout:g} s")
        link = self._link
        if now >= link.next_beat:
            link.beat()
        deadline = min(link.next_beat, self._next_ping, quiet_since + self._idle_timeout)
        return deadline if due is None else min(deadline, due)
