"""One client WebSocket of the fake server, driven through the websockets sans-I/O protocol.

Owning the byte stream ourselves is what makes faults exact: a stall simply
stops reading and writing, a drop aborts the transport without a close frame, a
reset does the same after ``SO_LINGER`` 0 so the peer gets a TCP RST. The session
knows the server only through :class:`~shardsync.simulator.hub.Hub`; the server
registers it and removes it once :meth:`WsSession.run` returns.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import socket
import struct
import time
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.http11 import Request as HttpRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

from shardsync.simulator import wire
from shardsync.simulator.hub import Hub
from shardsync.simulator.truth import PLURALS, Mutation, Scope

_TICK = 0.02
_CLOSE_GRACE = 2.0  # seconds a client gets to answer our close frame before the TCP abort


class WsSession:
    """Protocol state of one socket: authorization, its syncrequest scope, outbound batching, faults."""

    def __init__(self, hub: Hub, conn_id: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.hub = hub
        self.id = conn_id
        self.reader = reader
        self.writer = writer
        self.proto = ServerProtocol(max_size=hub.options.max_message_size)
        self.token: str | None = None
        self.scope: Scope | None = None
        self.capture: list[dict[str, Any]] | None = None
        self.pending: list[dict[str, Any]] = []
        self._flush_scheduled = False
        self._fragments: list[bytes] = []
        self._list_toggle = False
        #: Live props sent on this socket, newest last, for the replay knob.
        self.sent_props: collections.deque[dict[str, Any]] = collections.deque(maxlen=10_000)
        now = time.monotonic()
        self.opened = now
        self.last_sent = now
        self.last_client = now
        self.stalled_until: float | None = None
        self._unstalled = asyncio.Event()
        self._unstalled.set()
        self.closed = False
        #: Between the accepted upgrade and a successful authorize (counted in the server's peak_handshakes).
        self.handshaking = False
        #: This socket's entry in ``Records.subscriptions`` once it synced.
        self.subscription: dict[str, Any] | None = None

    @property
    def remainder(self) -> int | None:
        return self.scope.shard.remainder if self.scope is not None and self.scope.shard is not None else None

    # -- lifecycle ---------------------------------------------------------------
    async def run(self, head: bytes) -> None:
        self.proto.receive_data(head)
        events = self.proto.events_received()
        if events and isinstance(events[0], HttpRequest):
            answer = self.proto.accept(events[0])
        else:
            answer = self.proto.reject(400, "Malformed WebSocket handshake\n")
        self.proto.send_response(answer)
        self._write()
        if answer.status_code != 101:
            self._finish()
            return
        self.handshaking = True
        self.hub.records.handshake_started()
        self.send_raw(b"o")
        ticker = asyncio.create_task(self._tick())
        try:
            await self._read_loop()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            if not self.closed:
                self.abort()
            self._handshake_over()

    async def _read_loop(self) -> None:
        while not self.closed and self.proto.state is not State.CLOSED:
            await self._unstalled.wait()
            try:
                data = await self.reader.read(65536)
            except (ConnectionError, OSError):
                return
            if self.closed:
                return
            if not data:
                self.proto.receive_eof()
                self._write()
                return
            self.proto.receive_data(data)
            for event in self.proto.events_received():
                if not isinstance(event, Frame):
                    continue
                try:
                    self._on_frame(event)
                except Exception:  # a simulator bug must cost one socket, never the server
                    self.close(1011, "Internal simulator error")
            self._write()

    async def _tick(self) -> None:
        options = self.hub.options
        while not self.closed:
            await asyncio.sleep(_TICK)
            now = time.monotonic()
            if self.stalled_until is not None:
                if now < self.stalled_until:
                    continue
                self.unstall()
            if self.proto.state is not State.OPEN:
                continue
            if self.token is None and now - self.opened >= options.authorize_timeout:
                self.close(1008, "Authorization timeout")
            elif options.client_idle_timeout and now - self.last_client >= options.client_idle_timeout:
                self.close(1001, "Heartbeat timeout")
            elif now - self.last_sent >= options.server_heartbeat:
                self.send_raw(b"h")

    # -- inbound -------------------------------------------------------------------
    def _on_frame(self, frame: Frame) -> None:
        self.last_client = time.monotonic()
        if frame.opcode is Opcode.TEXT or frame.opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data = b"".join(self._fragments)
                self._fragments = []
                self._on_text(data)
        elif frame.opcode is Opcode.BINARY:
            self.close(1003, "Binary frames are not supported")
        elif frame.opcode is Opcode.CLOSE and self.proto.close_rcvd is not None:
            self.hub.records.close(self.id, "client", self.proto.close_rcvd.code, self.proto.close_rcvd.reason)

    def _on_text(self, data: bytes) -> None:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self.close(1007, "Invalid UTF-8")
            return
        if text.strip() == "[]":
            self.hub.records.heartbeat(self.id)
            return
        try:
            request = wire.parse_request(text)
        except wire.RequestError as exc:
            self.close(1002, str(exc)[:120])
            return
        endpoint = request.endpoint.lower()
        if endpoint == "authorize":
            self._authorize(request)
        elif self.token is None:
            # Chosen behaviour for a request before authorization: a 401 answer, then the socket closes.
            self.respond(request.id, 401, self._error("Access is denied"))
            self.close(1008, "Not authorized")
        elif endpoint == "user/syncrequest":
            self._sync(request)
        else:
            self.respond(request.id, 404, self._error(f"Not found: {request.endpoint}"))

    def _authorize(self, request: wire.Request) -> None:
        hub = self.hub
        hub.records.authorize_attempts += 1
        value, ticket = wire.parse_authorize(request, hub.options.authorize_body)
        now = time.time()
        penalty = hub.socket_penalties.check("authorize", ticket, now)
        if penalty is not None:
            self.respond(request.id, 200, penalty)
            return
        token = hub.auth.check(value, now)
        if token is None:
            self.respond(request.id, 401, self._error("Invalid access token"))
            return
        self.token = token.value
        self._handshake_over()
        self.respond(request.id, 200)

    def _handshake_over(self) -> None:
        if self.handshaking:
            self.handshaking = False
            self.hub.records.handshake_ended()

    def _sync(self, request: wire.Request) -> None:
        hub = self.hub
        options = hub.options
        hub.records.sync(self.id, request.id, request.body)
        if hub.ws429_left > 0:
            hub.ws429_left -= 1
            self.respond(request.id, 429)
            return
        penalty = hub.socket_penalties.check("syncrequest", wire.sync_ticket(request.body), time.time())
        if penalty is not None:
            self.respond(request.id, 200, penalty)
            return
        if self.scope is not None and options.second_sync != "replace":
            if options.second_sync == "reject":
                self.respond(request.id, 400, self._error("Only one user/syncrequest is allowed per connection"))
            return
        try:
            sync = wire.parse_sync(request.body, options.entity_types_default)
        except ValueError as exc:
            self.respond(request.id, 400, self._error(str(exc)))
            return
        if options.require_split and not sync.split:
            # What B2B vendors report: termination without an explanation.
            self.close(1008, "")
            return
        self.start_sync(request.id, sync.scope)

    def start_sync(self, request_id: int, scope: Scope) -> None:
        """Queue the snapshot and subscribe in one step, so snapshot + later props == truth."""
        hub = self.hub
        options = hub.options
        self.flush_pending()
        every = options.empty_collections == "include"
        if hub.take_blank(scope):
            snapshot = hub.truth.snapshot(Scope(entity_types=frozenset()), every_collection=every)
        else:
            snapshot = hub.truth.snapshot(scope, every_collection=every)
            for plural, entity in hub.poisoned_for(scope):
                snapshot.setdefault(plural, []).append(entity)
        if self.subscription is not None:  # second_sync=replace: the old subscription ends here
            hub.records.unsubscribed(self.subscription)
        self.scope = scope
        self.subscription = hub.records.subscribed(self.id, scope.shard)
        split = options.snapshot_mode == "split"
        if split:
            chunks = wire.chunk_snapshot(snapshot, options.split_chunks, PLURALS.values() if every else ())
        else:
            chunks = [snapshot]
        messages = wire.snapshot_messages(request_id, chunks, options.split_end if split else "none",
                                          lambda: self._captured(scope, options.interleave_props))
        last_part = len(messages) - 1
        # Live props hard on the heels of the completing part: a client must not
        # apply them before it has reconciled the snapshot.
        messages += self._captured(scope, options.trailing_props)
        if split and options.split_delay > 0:
            # A slow server: later chunks (and the props between them) come after
            # live props already published, which is what makes a late chunk stale.
            loop = asyncio.get_running_loop()
            for index, message in enumerate(messages):
                loop.call_later(index * options.split_delay, self.send_messages, [message], index == last_part)
        elif options.snapshot_frames == "one":
            self.send_messages(messages, True)
        else:
            for index, message in enumerate(messages):
                self.send_messages([message], index == last_part)

    def _captured(self, scope: Scope, count: int) -> list[dict[str, Any]]:
        """Generate ``count`` changes of ``scope`` now; this session's props come back instead of being sent."""
        if not count:
            return []
        self.capture = []
        self.hub.generate_for(scope, count)
        captured, self.capture = self.capture, None
        return captured

    # -- outbound ------------------------------------------------------------------
    def _error(self, text: str) -> str:
        return wire.error_text(text, self.hub.options.error_quoting)

    def respond(self, request_id: int, status: int, data: Any = None) -> None:
        self.flush_pending()
        self.send_raw(wire.frame([wire.response(request_id, status, data)]))

    def deliver(self, change: Mutation) -> None:
        options = self.hub.options
        entity: Any = change.entity
        if change.event_type == "Deleted" and options.deleted_entity == "id":
            entity = {"id": change.entity["id"]}
        self._list_toggle = not self._list_toggle
        if options.entity_list == "always" or (options.entity_list == "some" and self._list_toggle):
            entity = [entity]
        message = {"e": "props", "d": {"entityType": change.entity_type, "eventType": change.event_type,
                                       "entity": entity}}
        self.sent_props.append(message)
        self.enqueue(message)

    def enqueue(self, message: dict[str, Any]) -> None:
        if self.capture is not None:
            self.capture.append(message)
            return
        self.pending.append(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush_pending)

    def flush_pending(self) -> None:
        self._flush_scheduled = False
        batch = self.hub.options.batch
        pending, self.pending = self.pending, []
        for start in range(0, len(pending), batch):
            self.send_messages(pending[start:start + batch])

    def send_messages(self, messages: list[dict[str, Any]], completes_snapshot: bool = False) -> None:
        """Frame ``messages`` as one ``a[...]`` and send it; props get their ``ts`` now (``stamp_events``,
        ``stamp_entities``)."""
        options = self.hub.options
        if options.stamp_events or options.stamp_entities:
            now = time.time()
            for message in messages:
                if message.get("e") == "props":
                    if options.stamp_events:
                        message["ts"] = now
                    if options.stamp_entities:
                        message["d"] = wire.stamped(message["d"], now)
        self.send_raw(wire.frame(messages))
        if completes_snapshot and self.subscription is not None and not self.closed:
            self.hub.records.snapshot_sent(self.subscription)

    def send_raw(self, data: bytes) -> None:
        """Send one text frame as is (even invalid UTF-8: the fault knobs need that)."""
        if self.closed or self.proto.state is not State.OPEN:
            return
        self.proto.send_text(data)
        self.last_sent = time.monotonic()
        self._write()

    def _write(self) -> None:
        if self.closed or self.stalled_until is not None:
            return
        for chunk in self.proto.data_to_send():
            if chunk:
                self.writer.write(chunk)
            else:
                self._finish()
                return

    # -- faults and endings ----------------------------------------------------------
    def stall(self, seconds: float | None) -> None:
        self.stalled_until = math.inf if seconds is None else time.monotonic() + seconds
        self._unstalled.clear()

    def unstall(self) -> None:
        if self.stalled_until is None:
            return
        self.stalled_until = None
        # The client could not reach us meanwhile; it must not be judged idle for that.
        self.last_client = time.monotonic()
        self._unstalled.set()
        self._write()

    def close(self, code: int, reason: str) -> None:
        """Close handshake; the TCP connection is aborted if the client does not answer in time."""
        if self.closed or self.proto.state is not State.OPEN:
            return
        self.flush_pending()
        self._unsubscribe()
        self.hub.records.close(self.id, "server", code, reason)
        self.proto.send_close(code, reason)
        self._write()
        asyncio.get_running_loop().call_later(_CLOSE_GRACE, self.abort)

    def abort(self) -> None:
        """End the connection without a close frame (the peer sees a FIN, or an RST after :meth:`reset`)."""
        if self.closed:
            return
        self._ended()
        self.writer.transport.abort()

    def reset(self) -> None:
        """Abort with ``SO_LINGER`` 0, so the kernel answers with a TCP RST instead of a FIN."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.abort()

    def _finish(self) -> None:
        if self.closed:
            return
        self._ended()
        self.writer.close()

    def _ended(self) -> None:
        self.closed = True
        self._unsubscribe()
        self._handshake_over()
        self._unstalled.set()

    def _unsubscribe(self) -> None:
        if self.subscription is not None:
            self.hub.records.unsubscribed(self.subscription)
