"""A minimal correct mirror written by hand: the sqlite path's reference in bench/throughput.py and latency.py.

Raw socket frames (its own upgrade and RFC 6455 reader: server frames are
unmasked and, from the simulator, never fragmented), ``orjson``, a dict
mirror keyed by ``(entityType, id)``, and the sink's schema with the
reference pragmas (``ceiling.REFERENCE_PRAGMAS``).  What it does, it does as
the worker must: a re-delivered entity or the ``Deleted`` of an unknown one
writes nothing; every change gets its ``events`` row (with its account, a
fill's through its order) and each key's last state of the batch goes to
``entities``; a batch is committed when the socket has nothing more to read
or holds 5,000 changes.  What it leaves out is what a production worker needs
beside the stream: heartbeats, reconnects, resync diffing, status rows,
quarantine, bounds on hostile input.
"""

from __future__ import annotations

import base64
import os
import select
import socket
import sqlite3
import struct
from datetime import UTC, datetime
from typing import Any

import orjson

from ceiling import open_reference
from shardsync import protocol
from shardsync.change import ACCOUNT_KEYED_TYPES, ACCOUNT_VIA
from shardsync.simulator.truth import SINGULARS
from shardsync.sinks.sqlite import APPEND, DELETE, UPSERT  # the very statements the sink runs

BATCH_MAX = 5000


def connect(port: int) -> tuple[socket.socket, bytearray]:
    """TCP connect and WebSocket upgrade by hand; the socket and any bytes read past the response head."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /v1/websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buffer = bytearray()
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during the upgrade")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"upgrade refused: {head[:80]!r}")
    sock.settimeout(None)
    return sock, bytearray(rest)


def send_text(sock: socket.socket, text: str) -> None:
    """One masked text frame (a zero mask key: masking is then the identity)."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x81, 0x80 | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, size)
    sock.sendall(head + b"\0\0\0\0" + payload)


def frames(buffer: bytearray) -> tuple[list[bytes], int]:
    """Complete frames' payloads at the start of ``buffer`` and how many bytes they took."""
    out = []
    pos, end = 0, len(buffer)
    while end - pos >= 2:
        size = buffer[pos + 1] & 0x7F
        start = pos + 2
        if size == 126:
            if end - pos < 4:
                break
            size, start = int.from_bytes(buffer[pos + 2:pos + 4], "big"), pos + 4
        elif size == 127:
            if end - pos < 10:
                break
            size, start = int.from_bytes(buffer[pos + 2:pos + 10], "big"), pos + 10
        if end - start < size:
            break
        if buffer[pos] & 0x0F == 0x1:  # text; pings and the rest do not occur before the end
            out.append(bytes(buffer[start:start + size]))
        pos = start + size
    return out, pos


class ReferenceMirror:
    """The dict mirror and the pending batch of one shard file."""

    def __init__(self, path: str) -> None:
        self.conn: sqlite3.Connection = open_reference(path)
        self.mirror: dict[tuple[str, int], dict[str, Any]] = {}
        self.final: dict[tuple[str, int], tuple[Any, ...] | None] = {}
        self.events: list[tuple[Any, ...]] = []

    def account(self, entity_type: str, entity: dict[str, Any]) -> int | None:
        for _ in range(4):
            value = entity.get("id") if entity_type in ACCOUNT_KEYED_TYPES else entity.get("accountId")
            if type(value) is int:
                return value
            via = ACCOUNT_VIA.get(entity_type)
            parent = self.mirror.get((via[1], entity.get(via[0], -1))) if via else None
            if parent is None or via is None:
                return None
            entity_type, entity = via[1], parent
        return None

    def change(self, origin: str, entity_type: str, event_type: str, entity: dict[str, Any], at: str) -> None:
        key = (entity_type, entity["id"])
        current = self.mirror.get(key)
        if event_type == "Deleted":
            if current is None:
                return
            account = self.account(entity_type, current)
            del self.mirror[key]
            self.final[key] = None
        else:
            if current == entity:
                return
            self.mirror[key] = entity
            account = self.account(entity_type, entity)
        data = orjson.dumps(entity).decode()
        if event_type != "Deleted":
            self.final[key] = (entity_type, key[1], account, data, at)
        self.events.append((at, origin, entity_type, event_type, key[1], account, data))

    def commit(self) -> None:
        if not self.events:
            return
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(DELETE, [key for key, row in self.final.items() if row is None])
        conn.executemany(UPSERT, [row for row in self.final.values() if row is not None])
        conn.executemany(APPEND, self.events)
        conn.execute("COMMIT")
        self.final, self.events = {}, []


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run(port: int, token: str, path: str, entity_types: tuple[str, ...], ready_fd: int) -> None:
    """Serve shard 0/1 into ``path`` until the server closes; writes ``r`` to ``ready_fd`` once the snapshot
    is committed."""
    sock, buffer = connect(port)
    state = ReferenceMirror(path)
    body = protocol.sync_request_body(divisor=1, remainder=0, entity_types=entity_types)
    while True:
        payloads, used = frames(buffer)
        del buffer[:used]
        at = now_iso()
        for payload in payloads:
            if payload == b"o":
                send_text(sock, protocol.encode_authorize(0, token))
            if payload[:1] != b"a":
                continue
            for message in orjson.loads(payload[1:]):
                if message.get("e") == "props":
                    d = message["d"]
                    entities = d["entity"] if type(d["entity"]) is list else (d["entity"],)
                    for entity in entities:
                        state.change("live", d["entityType"], d["eventType"], entity, at)
                elif message.get("i") == 0:
                    send_text(sock, protocol.encode_request("user/syncrequest", 1, "", body))
                elif message.get("i") == 1:
                    for plural, collection in message["d"].items():
                        for entity in collection if type(collection) is list else ():
                            state.change("snapshot", SINGULARS[plural], "Created", entity, at)
                    state.commit()
                    os.write(ready_fd, b"r")
        if len(state.events) >= BATCH_MAX or not select.select([sock], [], [], 0)[0]:
            state.commit()
        chunk = sock.recv(1 << 20)
        if not chunk:
            state.commit()
            return
        buffer += chunk


def fork(port: int, token: str, path: str, entity_types: tuple[str, ...]) -> int:
    """Run :func:`run` in a forked child; returns its pid once its snapshot is committed."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_r)
            run(port, token, path, entity_types, ready_w)
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    if os.read(ready_r, 1) != b"r":
        raise RuntimeError("the reference mirror did not take its snapshot")
    os.close(ready_r)
    return pid
