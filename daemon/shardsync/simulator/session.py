"""One client WebSocket of the fake server, driven through the websockets sans-I/O protocol.

Owning the byte stream ourselves is what makes faults exact: a stall simply
stops reading and writing, a drop aborts the transport without a close frame.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from typing import TYPE_CHECKING, Any

from websockets.frames import Frame, Opcode
from websockets.http11 import Request as HttpRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

from shardsync.simulator import wire
from shardsync.simulator.truth import Mutation, Scope

if TYPE_CHECKING:
    from shardsync.simulator.server import SimServer

_TICK = 0.02
_CLOSE_GRACE = 2.0  # seconds a client gets to answer our close frame before the TCP abort


class WsSession:
    """Protocol state of one socket: authorization, its syncrequest scope, outbound batching, faults."""

    def __init__(self, server: SimServer, conn_id: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.id = conn_id
        self.reader = reader
        self.writer = writer
        self.proto = ServerProtocol(max_size=server.options.max_message_size)
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
        self.server.sessions[self.id] = self
        self.handshaking = True
        self.server.handshake_started()
        self.send_raw(b"o")
        ticker = asyncio.create_task(self._tick())
        try:
            await self._read_loop()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self.server.sessions.pop(self.id, None)
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
        options = self.server.options
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
            self.server.note_close(self.id, "client", self.proto.close_rcvd.code, self.proto.close_rcvd.reason)

    def _on_text(self, data: bytes) -> None:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self.close(1007, "Invalid UTF-8")
            return
        if text.strip() == "[]":
            self.server.note_heartbeat(self.id)
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
        self.server.stats_authorize_attempts += 1
        token = self.server.auth.check(request.body.strip(), time.time())
        if token is None:
            self.respond(request.id, 401, self._error("Invalid access token"))
            return
        self.token = token.value
        self._handshake_over()
        self.respond(request.id, 200)

    def _handshake_over(self) -> None:
        if self.handshaking:
            self.handshaking = False
            self.server.handshake_ended()

    def _sync(self, request: wire.Request) -> None:
        server = self.server
        options = server.options
        server.note_sync(self.id, request)
        if server.ws429_left > 0:
            server.ws429_left -= 1
            self.respond(request.id, 429)
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
        options = self.server.options
        self.flush_pending()
        snapshot = self.server.truth.snapshot(scope)
        self.scope = scope
        if options.snapshot_mode == "split":
            chunks = wire.chunk_snapshot(snapshot, options.split_chunks)
        else:
            chunks = [snapshot]
        messages: list[dict[str, Any]] = []
        for chunk in chunks:
            messages.append(wire.response(request_id, 200, chunk))
            messages += self._captured(scope, options.interleave_props)
        if options.snapshot_mode == "split" and options.split_end == "empty":
            messages.append(wire.response(request_id, 200, {}))
        elif options.snapshot_mode == "split" and options.split_end == "flag":
            messages.append(wire.response(request_id, 200, {"done": True}))
        # Live props hard on the heels of the completing part: a client must not
        # apply them before it has reconciled the snapshot.
        messages += self._captured(scope, options.trailing_props)
        if options.snapshot_mode == "split" and options.split_delay > 0:
            # A slow server: later chunks (and the props between them) come after
            # live props already published, which is what makes a late chunk stale.
            loop = asyncio.get_running_loop()
            for index, message in enumerate(messages):
                loop.call_later(index * options.split_delay, self.send_raw, wire.frame([message]))
        elif options.snapshot_frames == "one":
            self.send_raw(wire.frame(messages))
        else:
            for message in messages:
                self.send_raw(wire.frame([message]))

    def _captured(self, scope: Scope, count: int) -> list[dict[str, Any]]:
        """Generate ``count`` changes of ``scope`` now; this session's props come back instead of being sent."""
        if not count:
            return []
        self.capture = []
        self.server.generate_for(scope, count)
        captured, self.capture = self.capture, None
        return captured

    # -- outbound ------------------------------------------------------------------
    def _error(self, text: str) -> str:
        return wire.error_text(text, self.server.options.error_quoting)

    def respond(self, request_id: int, status: int, data: Any = None) -> None:
        self.flush_pending()
        self.send_raw(wire.frame([wire.response(request_id, status, data)]))

    def deliver(self, change: Mutation) -> None:
        options = self.server.options
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
        batch = self.server.options.batch
        pending, self.pending = self.pending, []
        for start in range(0, len(pending), batch):
            self.send_raw(wire.frame(pending[start:start + batch]))

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
        self.server.note_close(self.id, "server", code, reason)
        self.proto.send_close(code, reason)
        self._write()
        asyncio.get_running_loop().call_later(_CLOSE_GRACE, self.abort)

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._handshake_over()
        self._unstalled.set()
        self.writer.transport.abort()

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._handshake_over()
        self._unstalled.set()
        self.writer.close()
