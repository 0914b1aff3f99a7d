"""The fake Tradovate: REST, WebSocket and admin API on one asyncio TCP port (TLS optional).

websockets' own server cannot read request bodies, so the HTTP request head is
parsed here; plain HTTP is answered directly and upgrades are handed to
:class:`WsSession`. The knobs are mixed in from :mod:`.faults` and :mod:`.activity`;
every one is a plain method that must run on the loop thread.

Admin HTTP API (same port): ``POST /admin/<knob>`` with the knob's keyword arguments
as a JSON object; ``GET /admin/stats``; ``GET /admin/truth?divisor=&remainder=&expression=&entity_types=``;
``GET /admin/history`` (every key that ever existed) or ``?entity_type=&id=`` (one key):
the intervals ``[created_at, deleted_at|null]`` in epoch seconds during which the server had it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import defaultdict
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from shardsync.change import Entity, Key
from shardsync.simulator.activity import MALFORMED_KINDS, Activity, shard_scope
from shardsync.simulator.faults import Faults
from shardsync.simulator.generator import Generator
from shardsync.simulator.history import History
from shardsync.simulator.options import SimOptions, replace
from shardsync.simulator.penalties import SocketPenalties
from shardsync.simulator.poison import Poison
from shardsync.simulator.records import Records
from shardsync.simulator.session import WsSession
from shardsync.simulator.tokens import AuthState, Reply
from shardsync.simulator.truth import Truth

__all__ = ["MALFORMED_KINDS", "HttpError", "SimServer", "shard_scope"]

_HEAD_LIMIT = 64 * 1024
_BODY_LIMIT = 1024 * 1024
_EVICTION_STATUS = {"revoke401": 401, "http408": 408, "http502": 502}
_KNOBS = (
    "drop", "reset", "close", "shutdown", "revoke", "stall", "unstall", "refuse", "pause", "resume", "mutate",
    "step", "malformed", "inflate", "grow", "churn", "ws429", "penalty", "socket_penalty", "lockout", "event",
    "replay", "poison", "cure", "configure", "blank_snapshot", "purge", "touch_users",
)  # fmt: skip
_KNOB_METHODS = {"close": "close_frame", "event": "system_event"}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SimServer(Faults, Activity):
    """All simulator state; lives on one asyncio loop."""

    def __init__(self, options: SimOptions) -> None:
        self.options = options
        self.truth = Truth(options.reference_routing, History())
        self.generator = Generator(self.truth, options.seed)
        self.generator.populate(options.users, options.accounts)
        first_user = min(self.truth.entities["user"])
        self.auth = AuthState(options.username, options.password, options.secret, first_user,
                              options.token_lifetime, options.session_cap,
                              eviction_status=_EVICTION_STATUS[options.eviction])
        self.records = Records()
        self.socket_penalties = SocketPenalties()
        self.sessions: dict[int, WsSession] = {}
        self.poisoned: list[Poison] = []
        self.paused = False
        self.ws429_left = 0
        self.blank_left: dict[tuple[int | None, int | None], int] = {}
        self.refuse_until = 0.0
        self.port = 0
        self._next_conn = 1
        self._server: asyncio.Server | None = None
        self._generator_task: asyncio.Task[None] | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------------
    @property
    def tls(self) -> bool:
        return bool(self.options.tls_cert)

    async def start(self) -> int:
        context: ssl.SSLContext | None = None
        if self.tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.options.tls_cert, self.options.tls_key)
        self._server = await asyncio.start_server(self._on_connection, self.options.host, self.options.port,
                                                  limit=_HEAD_LIMIT, ssl=context,
                                                  ssl_handshake_timeout=10.0 if context else None)
        self.port = self._server.sockets[0].getsockname()[1]
        self._generator_task = asyncio.create_task(self._generate())
        return self.port

    async def stop(self) -> None:
        if self._generator_task is not None:
            self._generator_task.cancel()
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions.values()):
            session.abort()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        if self._generator_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._generator_task

    async def _generate(self) -> None:
        last = time.monotonic()
        credit = 0.0
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            elapsed, last = now - last, now
            if self.paused or self.options.event_rate <= 0:
                credit = 0.0
                continue
            credit += elapsed * self.options.event_rate
            steps = int(credit)
            credit -= steps
            for _ in range(min(steps, 10_000)):
                self.publish(self.generator.step())

    # -- connections --------------------------------------------------------------------
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            method, target, headers = _parse_head(head)
            path = urlsplit(target).path
            if headers.get("upgrade", "").lower() == "websocket" and path.rstrip("/").lower() == "/v1/websocket":
                if self.refusing():
                    self.records.refused_upgrades += 1
                    raise HttpError(503, "Service unavailable")
                await self._serve_websocket(head, reader, writer)
                return
            await self._serve_http(method, target, headers, reader, writer)
        except HttpError as exc:
            writer.write(_http_bytes(exc.status, {"errorText": str(exc)}))
        except Exception as exc:  # one bad client must never take the server down
            with contextlib.suppress(Exception):
                writer.write(_http_bytes(500, {"errorText": f"internal simulator error: {exc!r}"}))
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve_websocket(self, head: bytes, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        conn_id = self._next_conn
        self._next_conn += 1
        self.records.ws_total += 1
        session = WsSession(self, conn_id, reader, writer)
        self.sessions[conn_id] = session
        try:
            await session.run(head)
        finally:
            self.sessions.pop(conn_id, None)

    async def _serve_http(self, method: str, target: str, headers: dict[str, str],
                          reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            length = int(headers.get("content-length", "0") or 0)
            if not 0 <= length <= _BODY_LIMIT:
                raise HttpError(413, "request body too large")
            body = await reader.readexactly(length) if length else b""
            reply = self.handle_http(method, target, headers, body)
        except HttpError as exc:
            reply = Reply(exc.status, {"errorText": str(exc)})
        except asyncio.IncompleteReadError:
            return
        writer.write(_http_bytes(reply.status, reply.body))
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    def handle_http(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        parts = urlsplit(target)
        path = parts.path.rstrip("/")
        lowered = path.lower()
        if lowered == "/v1/auth/accesstokenrequest":
            if method != "POST":
                raise HttpError(405, "use POST")
            reply, evicted = self.auth.login(_json_body(body), time.time())
            self.evict(evicted)
            return reply
        if lowered == "/v1/auth/renewaccesstoken":
            return self.auth.renew(headers.get("authorization"), time.time())
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if path == "/admin/stats":
            return Reply(200, self.stats())
        if path == "/admin/truth":
            return Reply(200, self._admin_truth(query))
        if path == "/admin/history":
            return Reply(200, self._admin_history(query))
        if path.startswith("/admin/") and method == "POST":
            return self._admin(path.removeprefix("/admin/"), _json_body(body))
        raise HttpError(404, f"Not found: {path}")

    def _admin_truth(self, query: dict[str, str]) -> dict[str, Any]:
        try:
            scope = shard_scope(
                int(query["remainder"]) if "remainder" in query else None,
                int(query.get("divisor", "1")),
                query.get("expression", "modAccountId"),
                query["entity_types"].split(",") if query.get("entity_types") else None,
            )
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        return {"entities": [{"entityType": t, "id": i, "entity": e} for (t, i), e in self.truth.select(scope).items()]}

    def _admin_history(self, query: dict[str, str]) -> dict[str, Any]:
        history = self.truth.history
        if "entity_type" in query or "id" in query:
            try:
                key = (query["entity_type"], int(query["id"]))
            except (KeyError, ValueError):
                raise HttpError(400, "history of one key needs entity_type and an integer id") from None
            return {"entityType": key[0], "id": key[1], "intervals": history.of(key)}
        return {"history": [{"entityType": t, "id": i, "intervals": spans} for (t, i), spans in history.all().items()]}

    def _admin(self, knob: str, arguments: Any) -> Reply:
        if knob not in _KNOBS:
            raise HttpError(404, f"unknown knob {knob!r}; known: {', '.join(sorted(_KNOBS))}")
        handler: Callable[..., Any] = getattr(self, _KNOB_METHODS.get(knob, knob))
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise HttpError(400, "knob arguments must be a JSON object")
        try:
            result = handler(**arguments)
        except (TypeError, ValueError) as exc:
            raise HttpError(400, str(exc)) from None
        if isinstance(result, list):
            result = [c.as_json() for c in result]
        return Reply(200, {"ok": True, "result": result})

    # -- statistics --------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        connections: dict[str, int] = defaultdict(int)
        unsynced = 0
        for session in self.sessions.values():
            if session.closed:
                continue
            if session.remainder is None:
                unsynced += 1
            else:
                connections[str(session.remainder)] += 1
        return {
            "connections": dict(connections),
            "unsynced_connections": unsynced,
            **self.records.as_stats(),
            "logins": self.auth.logins,
            "renewals": self.auth.renewals,
            "socket_penalties": self.socket_penalties.as_stats(),
            "poisoned": [p.describe() for p in self.poisoned],
            "entities": len(self.truth),
            "paused": self.paused,
        }

    def truth_of(self, divisor: int = 1, remainder: int | None = None, expression: str = "modAccountId",
                 entity_types: list[str] | None = None) -> dict[Key, Entity]:
        """The truth a correct client of that shard must hold (poison entities are not part of it)."""
        return self.truth.select(shard_scope(remainder, divisor, expression, entity_types))

    def configure(self, **changes: Any) -> None:
        """Mutation switches at run time (``snapshot_mode``, ``event_rate`` ...); validated like the CLI.

        ``host``, ``port``, ``tls_cert`` and ``tls_key`` only take effect at start.
        """
        self.options = replace(self.options, **changes)
        self.truth.reference_routing = self.options.reference_routing
        self.auth.token_lifetime = self.options.token_lifetime
        self.auth.session_cap = self.options.session_cap
        self.auth.eviction_status = _EVICTION_STATUS[self.options.eviction]
        self.auth.username = self.options.username
        self.auth.password = self.options.password
        self.auth.secret = self.options.secret


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    fields = lines[0].split(" ")
    if len(fields) != 3:
        raise HttpError(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return fields[0].upper(), fields[1], headers


def _json_body(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise HttpError(400, "request body is not valid JSON") from None


def _http_bytes(status: int, body: dict[str, Any] | None) -> bytes:
    payload = orjson.dumps(body) if body is not None else b""
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n")
    return head.encode() + payload
