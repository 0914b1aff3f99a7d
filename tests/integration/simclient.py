"""A minimal Tradovate client for the simulator tests: REST over urllib, the user socket over websocket-client."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import websocket

from shardsync.simulator import SINGULARS, Simulator
from shardsync.simulator.truth import ACCOUNT_FIELD_TYPES, ACCOUNT_KEYED_TYPES, PARENTS

Factory = Callable[..., Simulator]
Key = tuple[str, int]
CREDS = {"name": "demo", "password": "demo-password", "appId": "t", "appVersion": "1", "cid": 7,
         "sec": "demo-secret", "deviceId": "dev-1"}
ACCOUNT_OWNED = ACCOUNT_KEYED_TYPES | ACCOUNT_FIELD_TYPES | set(PARENTS)
ALL_TYPES = ["user", "account", "accountRiskStatus", "userAccountAutoLiq", "cashBalance", "position", "order",
             "orderVersion", "fill", "fillPair", "command", "commandReport", "contract", "product", "currency"]


def http(method: str, url: str, body: Any = None, token: str | None = None,
         context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    """One REST call to a loopback simulator (https needs ``context``); status and decoded body."""
    assert url.startswith(("http://127.0.0.1:", "https://127.0.0.1:"))
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback only
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:  # noqa: S310 - loopback
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def login(sim: Simulator, context: ssl.SSLContext | None = None, **changes: Any) -> dict[str, Any]:
    status, body = http("POST", sim.rest_url + "/auth/accesstokenrequest", {**CREDS, **changes}, context=context)
    assert status == 200
    return dict(body)


class Client:
    """A minimal Tradovate user-socket client on websocket.WebSocket."""

    def __init__(self, sim: Simulator, sslopt: dict[str, Any] | None = None) -> None:
        self.ws = websocket.WebSocket(skip_utf8_validation=True, sslopt=sslopt)
        self.ws.connect(sim.ws_url, timeout=5)
        self.raw: list[bytes] = []
        assert self.recv_raw() == b"o"

    def recv_raw(self, timeout: float = 5.0) -> bytes:
        self.ws.settimeout(timeout)
        opcode, data = self.ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise ConnectionAbortedError(int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005)
        return bytes(data)

    def send(self, endpoint: str, request_id: int, body: str = "", query: str = "") -> None:
        self.ws.send(f"{endpoint}\n{request_id}\n{query}\n{body}")

    def messages(self, until: Callable[[list[dict[str, Any]]], bool], timeout: float = 5.0) -> list[dict[str, Any]]:
        """Messages of a[...] frames (h skipped) until ``until(messages)``."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while not until(got):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; got {got!r:.500}")
            data = self.recv_raw(left)
            self.raw.append(data)
            if data.startswith(b"a"):
                got += json.loads(data[1:])
        return got

    def response(self, request_id: int) -> dict[str, Any]:
        got = self.messages(lambda m: any(x.get("i") == request_id for x in m))
        return next(x for x in got if x.get("i") == request_id)

    def authorize(self, token: str, request_id: int = 0) -> dict[str, Any]:
        self.send("authorize", request_id, token)
        return self.response(request_id)

    def closed_code(self, timeout: float = 5.0) -> int:
        """Read until the server closes; the close code, or 1006 for an abort."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.raw.append(self.recv_raw(deadline - time.monotonic()))
        except ConnectionAbortedError as exc:
            return int(exc.args[0])
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            return 1006
        raise AssertionError("socket still open")

    def close(self) -> None:
        self.ws.close(timeout=0.5)


def connect(sim: Simulator, token: str | None = None) -> Client:
    client = Client(sim)
    assert client.authorize(token or login(sim)["accessToken"]) == {"s": 200, "i": 0}
    return client


def sync_body(divisor: int = 1, remainder: int = 0, expression: str = "modAccountId",
              types: list[str] | None = None, split: bool = True) -> str:
    body: dict[str, Any] = {"splitResponses": split, "entityTypes": types if types is not None else ALL_TYPES}
    if divisor > 1:
        body["shardingExpression"] = {"expressionType": expression, "divisor": divisor, "remainder": remainder}
    return json.dumps(body)


def merge(messages: list[dict[str, Any]], sync_id: int = 1) -> dict[Key, dict[str, Any]]:
    """Merge every same-id snapshot response by collection and id."""
    mirror: dict[Key, dict[str, Any]] = {}
    for message in messages:
        if message.get("i") == sync_id and message.get("s") == 200:
            for plural, entities in message["d"].items():
                if isinstance(entities, list):
                    for entity in entities:
                        mirror[(SINGULARS[plural], entity["id"])] = entity
    return mirror


def apply(mirror: dict[Key, dict[str, Any]], messages: list[dict[str, Any]]) -> None:
    for message in messages:
        if message.get("e") != "props":
            continue
        d = message["d"]
        entities = d["entity"] if isinstance(d["entity"], list) else [d["entity"]]
        for entity in entities:
            key = (d["entityType"], entity["id"])
            if d["eventType"] == "Deleted":
                mirror.pop(key, None)
            else:
                mirror[key] = entity


def snapshot_of(sim: Simulator, body: str, chunks: int = 1) -> tuple[Client, dict[Key, dict[str, Any]]]:
    client = connect(sim)
    client.send("user/syncrequest", 1, body)
    got = client.messages(lambda m: sum(x.get("i") == 1 for x in m) >= chunks)
    return client, merge(got)
