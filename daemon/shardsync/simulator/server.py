"""The fake Tradovate: REST, WebSocket and admin API on one asyncio TCP port, plus the fault knobs.

websockets' own server cannot read request bodies, so the HTTP request head is
parsed here; plain HTTP is answered directly and upgrades are handed to
:class:`WsSession`. Every knob is a plain method that must run on the loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from shardsync.change import Entity, Key
from shardsync.simulator import wire
from shardsync.simulator.generator import Generator
from shardsync.simulator.options import EXPRESSIONS, SimOptions, replace
from shardsync.simulator.session import WsSession
from shardsync.simulator.tokens import AuthState, Reply
from shardsync.simulator.truth import Mutation, Scope, Shard, Truth

MALFORMED_KINDS = ("truncated", "not_array", "bad_utf8", "unknown_letter", "huge")
_HEAD_LIMIT = 64 * 1024
_BODY_LIMIT = 1024 * 1024


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def shard_scope(remainder: int | None, divisor: int = 1, expression: str = "modAccountId",
                entity_types: list[str] | None = None) -> Scope:
    """The scope of one shard (``remainder`` None = the whole truth)."""
    if expression not in EXPRESSIONS:
        raise ValueError(f"expression must be one of {', '.join(EXPRESSIONS)}")
    if remainder is not None and not 0 <= remainder < divisor:
        raise ValueError("remainder must satisfy 0 <= remainder < divisor")
    shard = Shard(expression, divisor, remainder) if remainder is not None else None
    return Scope(shard, None, None, frozenset(entity_types) if entity_types is not None else None)


class SimServer:
    """All simulator state; lives on one asyncio loop."""

    def __init__(self, options: SimOptions) -> None:
        self.options = options
        self.truth = Truth(options.reference_routing)
        self.generator = Generator(self.truth, options.seed)
        self.generator.populate(options.users, options.accounts)
        first_user = min(self.truth.entities["user"])
        self.auth = AuthState(options.username, options.password, options.secret, first_user,
                              options.token_lifetime, options.session_cap)
        self.sessions: dict[int, WsSession] = {}
        self.paused = False
        self.ws429_left = 0
        self.port = 0
        self._next_conn = 1
        self._server: asyncio.Server | None = None
        self._generator_task: asyncio.Task[None] | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stats_authorize_attempts = 0
        self._syncrequests: list[dict[str, Any]] = []
        self._heartbeats: dict[int, list[float]] = defaultdict(list)
        self._closes: list[dict[str, Any]] = []
        self._ws_total = 0
        self._handshaking = 0
        self._peak_handshakes = 0

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> int:
        self._server = await asyncio.start_server(self._on_connection, self.options.host, self.options.port,
                                                  limit=_HEAD_LIMIT)
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

    # -- fan-out ------------------------------------------------------------------------
    def publish(self, changes: list[Mutation]) -> None:
        for session in list(self.sessions.values()):
            if session.scope is None or session.closed:
                continue
            for change in changes:
                if self.truth.wants(change, session.scope):
                    session.deliver(change)

    def generate_for(self, scope: Scope, count: int) -> list[Mutation]:
        accounts = self.truth.accounts_in(scope)
        changes: list[Mutation] = []
        for _ in range(count if accounts else 0):
            step = self.generator.step(accounts)
            self.publish(step)
            changes += step
        return changes

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
                conn_id = self._next_conn
                self._next_conn += 1
                self._ws_total += 1
                await WsSession(self, conn_id, reader, writer).run(head)
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
            self._evict(evicted)
            return reply
        if lowered == "/v1/auth/renewaccesstoken":
            return self.auth.renew(headers.get("authorization"), time.time())
        if path == "/admin/stats":
            return Reply(200, self.stats())
        if path == "/admin/truth":
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            try:
                scope = shard_scope(
                    int(query["remainder"]) if "remainder" in query else None,
                    int(query.get("divisor", "1")),
                    query.get("expression", "modAccountId"),
                    query["entity_types"].split(",") if query.get("entity_types") else None,
                )
            except ValueError as exc:
                raise HttpError(400, str(exc)) from None
            entities = [{"entityType": t, "id": i, "entity": e} for (t, i), e in self.truth.select(scope).items()]
            return Reply(200, {"entities": entities})
        if path.startswith("/admin/") and method == "POST":
            return self._admin(path.removeprefix("/admin/"), _json_body(body))
        raise HttpError(404, f"Not found: {path}")

    def _admin(self, knob: str, arguments: Any) -> Reply:
        handlers: dict[str, Callable[..., Any]] = {
            "drop": self.drop, "close": self.close_frame, "shutdown": self.shutdown, "revoke": self.revoke,
            "stall": self.stall, "unstall": self.unstall, "pause": self.pause, "resume": self.resume,
            "mutate": self.mutate, "step": self.step, "malformed": self.malformed, "inflate": self.inflate,
            "ws429": self.ws429, "penalty": self.penalty, "lockout": self.lockout, "event": self.system_event,
            "replay": self.replay, "configure": self.configure,
        }
        handler = handlers.get(knob)
        if handler is None:
            raise HttpError(404, f"unknown knob {knob!r}; known: {', '.join(sorted(handlers))}")
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

    def _evict(self, tokens: list[str]) -> None:
        if not tokens:
            return
        doomed = set(tokens)
        for session in list(self.sessions.values()):
            if session.token in doomed:
                self._shutdown_one(session, "ConnectionQuotaReached", "Connection quota reached")

    # -- statistics --------------------------------------------------------------------
    def note_heartbeat(self, conn_id: int) -> None:
        self._heartbeats[conn_id].append(time.time())

    def note_sync(self, conn_id: int, request: wire.Request) -> None:
        try:
            body: Any = orjson.loads(request.body) if request.body.strip() else None
        except orjson.JSONDecodeError:
            body = request.body
        self._syncrequests.append({"conn": conn_id, "id": request.id, "body": body})

    def note_close(self, conn_id: int, by: str, code: int, reason: str) -> None:
        self._closes.append({"conn": conn_id, "by": by, "code": code, "reason": reason})

    def handshake_started(self) -> None:
        """A WebSocket upgrade was accepted; it counts until its authorize succeeds or it closes."""
        self._handshaking += 1
        self._peak_handshakes = max(self._peak_handshakes, self._handshaking)

    def handshake_ended(self) -> None:
        self._handshaking -= 1

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
            "ws_connections_total": self._ws_total,
            "handshakes": self._handshaking,
            "peak_handshakes": self._peak_handshakes,
            "logins": self.auth.logins,
            "renewals": self.auth.renewals,
            "authorize_attempts": self.stats_authorize_attempts,
            "syncrequests": list(self._syncrequests),
            "heartbeats": {str(k): list(v) for k, v in self._heartbeats.items()},
            "closes": list(self._closes),
            "entities": len(self.truth),
            "paused": self.paused,
        }

    def truth_of(self, divisor: int = 1, remainder: int | None = None, expression: str = "modAccountId",
                 entity_types: list[str] | None = None) -> dict[Key, Entity]:
        return self.truth.select(shard_scope(remainder, divisor, expression, entity_types))

    # -- knobs -------------------------------------------------------------------------
    def targets(self, remainder: int | None = None, divisor: int | None = None) -> list[WsSession]:
        """Open sockets of one remainder (``None`` = every socket, synced or not)."""
        found = []
        for session in self.sessions.values():
            if session.closed:
                continue
            if remainder is None:
                found.append(session)
                continue
            shard = session.scope.shard if session.scope is not None else None
            if shard is not None and shard.remainder == remainder and divisor in (None, shard.divisor):
                found.append(session)
        return found

    def drop(self, remainder: int | None = None, divisor: int | None = None) -> int:
        """Abort sockets without a close frame (a network cut)."""
        sessions = self.targets(remainder, divisor)
        for session in sessions:
            self.note_close(session.id, "server", 1006, "dropped")
            session.abort()
        return len(sessions)

    def close_frame(self, code: int = 3000, reason: str = "Go away!", remainder: int | None = None,
                    divisor: int | None = None) -> int:
        """Send a SockJS ``c[code,"reason"]`` frame, then close the WebSocket."""
        sessions = self.targets(remainder, divisor)
        for session in sessions:
            session.send_raw(b"c" + orjson.dumps([code, reason]))
            session.close(1000, reason)
        return len(sessions)

    def shutdown(self, reason_code: str = "Maintenance", reason: str = "Server maintenance",
                 remainder: int | None = None, divisor: int | None = None) -> int:
        """Send a ``shutdown`` event with ``reason_code``, then close."""
        sessions = self.targets(remainder, divisor)
        for session in sessions:
            self._shutdown_one(session, reason_code, reason)
        return len(sessions)

    def _shutdown_one(self, session: WsSession, reason_code: str, reason: str) -> None:
        session.enqueue({"e": "shutdown", "d": {"reasonCode": reason_code, "reason": reason}})
        session.flush_pending()
        session.close(1000, reason_code)

    def revoke(self, token: str | None = None) -> int:
        """Revoke one token (or all); its sockets keep streaming unless ``close_on_revoke``."""
        revoked = set(self.auth.revoke(token))
        if self.options.close_on_revoke:
            for session in list(self.sessions.values()):
                if session.token in revoked:
                    session.close(1008, "Access token revoked")
        return len(revoked)

    def stall(self, seconds: float | None = None, remainder: int | None = None, divisor: int | None = None) -> int:
        """Stop reading and writing (no ``h`` either) for ``seconds``, or until :meth:`unstall`."""
        sessions = self.targets(remainder, divisor)
        for session in sessions:
            session.stall(seconds)
        return len(sessions)

    def unstall(self, remainder: int | None = None, divisor: int | None = None) -> int:
        sessions = self.targets(remainder, divisor)
        for session in sessions:
            session.unstall()
        return len(sessions)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def step(self, count: int = 1) -> list[Mutation]:
        """Run ``count`` generator steps now (tests that want changes without waiting for the rate)."""
        changes: list[Mutation] = []
        for _ in range(count):
            step = self.generator.step()
            self.publish(step)
            changes += step
        # Framed before the admin reply goes out: a caller (bench/throughput.py)
        # that then lets a reader go measures the reader, not this encoding.
        for session in list(self.sessions.values()):
            session.flush_pending()
        return changes

    def mutate(self, count: int = 5, remainder: int | None = None, divisor: int = 1,
               expression: str = "modAccountId", deletions: int = 1) -> list[Mutation]:
        """Apply ``count`` changes to one shard's accounts, ``deletions`` of them deletions; returns them."""
        accounts = self.truth.accounts_in(shard_scope(remainder, divisor, expression))
        if not accounts:
            raise ValueError("that shard owns no accounts")
        changes: list[Mutation] = []
        for _ in range(min(deletions, count)):
            for account_id in self.generator.rng.sample(accounts, len(accounts)):
                deleted = self.generator.delete(account_id)
                if deleted:
                    changes += deleted
                    break
        for _ in range(count - min(deletions, count)):
            changes += self.generator.step(accounts, allow_delete=False)
        self.publish(changes)
        return changes

    def inflate(self, count: int, text_bytes: int = 200, remainder: int | None = None, divisor: int = 1,
                expression: str = "modAccountId") -> int:
        """Add ``count`` padded orders to one shard so its next snapshot is large; returns changes made."""
        accounts = self.truth.accounts_in(shard_scope(remainder, divisor, expression))
        if not accounts:
            raise ValueError("that shard owns no accounts")
        changes = self.generator.inflate(accounts, count, text_bytes)
        self.publish(changes)
        return len(changes)

    def malformed(self, kind: str, remainder: int | None = None, divisor: int | None = None,
                  size_mib: float = 1.0) -> int:
        """Send one broken frame: truncated JSON, ``a{}``, bad UTF-8, unknown letter, or a huge valid frame."""
        if kind not in MALFORMED_KINDS:
            raise ValueError(f"kind must be one of {', '.join(MALFORMED_KINDS)}")
        sessions = self.targets(remainder, divisor)
        fixed = {
            "truncated": b'a[{"s":',
            "not_array": b"a{}",
            "bad_utf8": b'a[{"e":"props","d":"\xff\xfe\xfd"}]',
            "unknown_letter": b"x",
        }
        for session in sessions:
            session.flush_pending()
            session.send_raw(fixed[kind] if kind != "huge" else self._huge_frame(session, size_mib))
        return len(sessions)

    def _huge_frame(self, session: WsSession, size_mib: float) -> bytes:
        """A valid frame of at least ``size_mib`` MiB: the shard's current entities re-sent as Updated."""
        target = int(size_mib * 1024 * 1024)
        scope = session.scope or Scope()
        rows = list(self.truth.select(scope).items()) or [(("currency", 0), {"id": 0})]
        parts: list[bytes] = []
        size = 0
        while size < target:
            for (entity_type, _), entity in rows:
                part = orjson.dumps({"e": "props", "d": {"entityType": entity_type, "eventType": "Updated",
                                                         "entity": entity}})
                parts.append(part)
                size += len(part) + 1
                if size >= target:
                    break
        return b"a[" + b",".join(parts) + b"]"

    def ws429(self, count: int = 1) -> None:
        """Answer the next ``count`` syncrequests with ``{"s":429,"i":id}``."""
        self.ws429_left = count

    def penalty(self, mode: str = "ticket", count: int = 1, p_time: float = 1.0) -> None:
        """Answer the next ``count`` logins with a p-ticket (``ticket``) or a p-captcha (``captcha``)."""
        if mode not in ("ticket", "captcha"):
            raise ValueError("mode must be ticket or captcha")
        self.auth.penalty_seconds = p_time
        if mode == "ticket":
            self.auth.ticket_penalties = count
        else:
            self.auth.captcha_penalties = count

    def lockout(self, status: int = 429, count: int = 1) -> None:
        """Answer the next ``count`` logins with HTTP ``status`` (423 or 429) and an empty body."""
        if status not in (423, 429):
            raise ValueError("status must be 423 or 429")
        self.auth.lockouts = [status] * count

    def replay(self, count: int = 100, remainder: int | None = None, divisor: int | None = None) -> int:
        """Send the last ``count`` live props of each socket again (the reported re-delivery of
        a session's events); returns how many messages were re-sent."""
        if count < 1:
            raise ValueError("count must be >= 1")
        sent = 0
        for session in self.targets(remainder, divisor):
            for message in list(session.sent_props)[-count:]:
                session.enqueue(message)
                sent += 1
        return sent

    def system_event(self, name: str = "OtherEnvAdminAlertSignal", data: Any = None,
                     remainder: int | None = None, divisor: int | None = None) -> int:
        """Send ``{"e": name, "d": data}`` to synced sockets, whatever their entityTypes."""
        payload = data if data is not None else {"id": 1, "text": "Admin alert", "timestamp": "now"}
        sessions = [s for s in self.targets(remainder, divisor) if s.scope is not None]
        for session in sessions:
            session.enqueue({"e": name, "d": payload})
        return len(sessions)

    def configure(self, **changes: Any) -> None:
        """Mutation switches at run time (``snapshot_mode``, ``event_rate`` ...); validated like the CLI."""
        self.options = replace(self.options, **changes)
        self.truth.reference_routing = self.options.reference_routing
        self.auth.token_lifetime = self.options.token_lifetime
        self.auth.session_cap = self.options.session_cap
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
