"""What the simulator saw, for tests and the chaos oracle: requests, heartbeats, closes, subscriptions.

Times are wall-clock epoch seconds (``time.time()``), so a test can compare them
with the daemon's own timestamps. Every list only grows; a run of 10,000
reconnects keeps 10,000 small records.

A **subscription** is one synced socket: a record is opened when a
``user/syncrequest`` is accepted and never removed::

    {"conn": 7, "divisor": 4, "remainder": 1, "expression": "modAccountId",
     "synced_at": 1767600000.12, "snapshot_sent_at": 1767600000.13, "closed_at": null}

``divisor``/``remainder``/``expression`` are null for an unsharded request (users,
accounts or neither). ``snapshot_sent_at`` is when the last snapshot part (or the
end marker) was handed to the socket, null until then. ``closed_at`` is when the
server stopped serving the socket (its close frame sent, the connection aborted,
reset or closed by the client), null while it is live; a ``second_sync=replace``
request closes the old record and opens a new one for the same ``conn``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import orjson

from shardsync.simulator.truth import Shard


class Records:
    """Counters and records of every socket; the clock is injected for tests."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.authorize_attempts = 0
        self.ws_total = 0
        self.refused_upgrades = 0
        self.handshaking = 0
        self.peak_handshakes = 0
        self.syncrequests: list[dict[str, Any]] = []
        self.heartbeats: dict[int, list[float]] = defaultdict(list)
        self.closes: list[dict[str, Any]] = []
        self.subscriptions: list[dict[str, Any]] = []

    # -- requests and closes ---------------------------------------------------------
    def heartbeat(self, conn_id: int) -> None:
        self.heartbeats[conn_id].append(self.clock())

    def sync(self, conn_id: int, request_id: int, body: str) -> None:
        try:
            parsed: Any = orjson.loads(body) if body.strip() else None
        except orjson.JSONDecodeError:
            parsed = body
        self.syncrequests.append({"conn": conn_id, "id": request_id, "body": parsed})

    def close(self, conn_id: int, by: str, code: int, reason: str) -> None:
        self.closes.append({"conn": conn_id, "by": by, "code": code, "reason": reason})

    def handshake_started(self) -> None:
        """A WebSocket upgrade was accepted; it counts until its authorize succeeds or it closes."""
        self.handshaking += 1
        self.peak_handshakes = max(self.peak_handshakes, self.handshaking)

    def handshake_ended(self) -> None:
        self.handshaking -= 1

    # -- subscriptions ------------------------------------------------------------------
    def subscribed(self, conn_id: int, shard: Shard | None) -> dict[str, Any]:
        """Open the record of a newly synced socket and return it (the session stamps it later)."""
        record = {
            "conn": conn_id,
            "divisor": shard.divisor if shard is not None else None,
            "remainder": shard.remainder if shard is not None else None,
            "expression": shard.expression if shard is not None else None,
            "synced_at": self.clock(),
            "snapshot_sent_at": None,
            "closed_at": None,
        }
        self.subscriptions.append(record)
        return record

    def snapshot_sent(self, record: dict[str, Any]) -> None:
        record["snapshot_sent_at"] = self.clock()

    def unsubscribed(self, record: dict[str, Any]) -> None:
        if record["closed_at"] is None:
            record["closed_at"] = self.clock()

    def as_stats(self) -> dict[str, Any]:
        return {
            "ws_connections_total": self.ws_total,
            "refused_upgrades": self.refused_upgrades,
            "handshakes": self.handshaking,
            "peak_handshakes": self.peak_handshakes,
            "authorize_attempts": self.authorize_attempts,
            "syncrequests": list(self.syncrequests),
            "heartbeats": {str(k): list(v) for k, v in self.heartbeats.items()},
            "closes": list(self.closes),
            "subscriptions": [dict(r) for r in self.subscriptions],
        }
