"""Issue 12, item 4: entities no sink can store, sent by a server the simulator cannot imitate, are quarantined.

A hostile Tradovate answers the real worker's syncrequest with a snapshot
full of poison (nesting orjson parses but cannot write, nesting orjson cannot
even parse, ids and links outside signed 64 bits, bad UTF-8, non-objects),
then sends the same kinds live, among them two 1000-deep entities with one
id in one frame (Python's recursive ``==`` in the mirror raised
RecursionError on them).  The shard must go live on the first connection,
hold exactly the good entities, keep every poison as a rejected row, count
them, and never reconnect or crash.
"""

from __future__ import annotations

import sqlite3
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from hostile_server import HostileServer, Peer

from integration.worker_harness import WorkerRun
from polling import wait_until

Hostile = Callable[..., HostileServer]


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def order(ident: bytes, *, account: bytes = b"7", text: bytes = b'"ok"') -> bytes:
    return b'{"id":' + ident + b',"accountId":' + account + b',"ordStatus":"Working","text":' + text + b"}"


#: Snapshot orders: (JSON, kept?).  2000 levels: the frame is beyond orjson (salvage); 300 and 1000: orjson
#: parses them but cannot write them.
SNAPSHOT_ORDERS = [
    (order(b"1"), True),
    (order(b"2", text=deep(300)), False),
    (order(b"3", text=deep(2000)), False),
    (order(b"9223372036854775808"), False),
    (order(b"4", account=b"9223372036854775808"), False),
    (order(b'"five"'), False),
    (b'{"id":6,"text":"\xff\xfe"}', False),
    (b"17", False),
    (order(b"8"), True),
]
SNAPSHOT_FILLS = [
    (b'{"id":20,"orderId":1,"qty":1}', True),
    (b'{"id":21,"orderId":18446744073709551615,"qty":1}', False),
]


def props(entity: bytes, event_type: bytes = b"Created", entity_type: bytes = b"order") -> bytes:
    return (b'{"e":"props","d":{"entityType":"' + entity_type + b'","eventType":"' + event_type
            + b'","entity":' + entity + b"}}")


def snapshot_frame(request_id: bytes) -> bytes:
    orders = b",".join(text for text, _ in SNAPSHOT_ORDERS)
    fills = b",".join(text for text, _ in SNAPSHOT_FILLS)
    return (b'a[{"s":200,"i":' + request_id + b',"d":{"orders":[' + orders + b'],"fills":[' + fills
            + b'],"users":[{"id":70,"name":"u"}]}}]')


#: Live frames, in order; what each leaves behind is in EXPECTED_* below.
LIVE_FRAMES = [
    # Two 1000-deep versions of one order in one frame: orjson parses them (1005 levels with the frame).
    b"a[" + props(order(b"30", text=deep(1000))) + b"," + props(order(b"30", text=deep(1000)), b"Updated") + b"]",
    # Beyond orjson in the middle of good events: only the middle one is lost.
    b"a[" + props(order(b"31")) + b"," + props(order(b"32", text=deep(1100))) + b"," + props(order(b"33")) + b"]",
    # A list entity with one bad member, and a system event whose payload no sink can write.
    b"a[" + props(b"[" + order(b"34") + b"," + order(b"9223372036854775809") + b"]") + b","
    + b'{"e":"adminAlert","d":{"x":' + deep(400) + b"}}]",
    b'a[{"e":"adminAlert","d":{"x":' + deep(1500) + b"}}]",
    # The stored order 1, updated with an unwritable body: refused, so the stored version stays.
    b"a[" + props(order(b"1", text=deep(260)), b"Updated") + b"]",
    b"a[" + props(order(b"35")) + b"]",  # the last one: once it is stored, everything before was handled
]
EXPECTED_ENTITIES = {("order", 1), ("order", 8), ("fill", 20), ("user", 70), ("order", 31), ("order", 33),
                     ("order", 34), ("order", 35)}
#: (entity_type, event_type, id) of every rejected row, in order.
EXPECTED_REJECTED = [
    ("order", "Snapshot", 2), ("order", "Snapshot", 3), ("order", "Snapshot", None), ("order", "Snapshot", 4),
    ("order", "Snapshot", None), ("order", "Snapshot", 6), ("order", "Snapshot", None),
    ("fill", "Snapshot", 21),
    ("order", "Created", 30), ("order", "Updated", 30),
    ("order", "Created", 32),
    ("order", "Created", None), ("adminAlert", "Event", None),
    ("adminAlert", "Event", None),
    ("order", "Updated", 1),
]


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_a_snapshot_and_a_stream_full_of_poison_leave_the_shard_live(hostile: Hostile, tmp_path: Path) -> None:
    """Every poison kind, in the snapshot and live: live on the first connection, exactly the good entities
    stored, each poison a rejected row (reason, key, account), 15 quarantined, no reconnect, no crash."""
    live, done = threading.Event(), threading.Event()

    def script(peer: Peer) -> None:
        if peer.open_tradovate() and (sync := peer.wait_text(b"user/syncrequest\n")):
            request_id = sync.frame.payload.split(b"\n")[1]
            peer.text(snapshot_frame(request_id))
            if live.wait(15):  # the live frames go to a shard that is live (not buffered during the snapshot)
                for frame in LIVE_FRAMES:
                    peer.text(frame)
                done.set()
        peer.wait_gone(30)

    server = hostile(script)
    stand_in = types.SimpleNamespace(ws_url=server.url())
    with WorkerRun(stand_in, tmp_path, token="hostile-token", snapshot_quiet=0.2) as worker:  # type: ignore[arg-type]  # noqa: S106
        db = worker.db_path()
        worker.wait_live()
        assert worker.last_beat().quarantined == 8  # type: ignore[union-attr]  # the snapshot's
        live.set()
        wait_until(done.is_set, 10, "the script to send everything")
        wait_until(lambda: db.exists() and ("order", 35) in worker.sink_entities(), 15, "the last live order")
        assert set(worker.sink_entities()) == EXPECTED_ENTITIES
        assert worker.sink_entities()[("order", 1)]["text"] == "ok"  # the refused update left the row alone
        rejected = rows(db, "SELECT entity_type, event_type, id, account_id, data FROM events "
                            "WHERE origin = 'rejected' ORDER BY seq")
        assert [(t, e, i) for t, e, i, _, _ in rejected] == EXPECTED_REJECTED
        accounts = [a for t, _, _, a, _ in rejected if t == "order"]
        assert accounts == [7, 7, 7, None, 7, None, None, 7, 7, 7, 7, 7]  # 2**63 and a missing one stay NULL
        fill = orjson.loads(rejected[7][4])
        assert fill["reason"] == "orderId outside signed 64-bit" and rejected[7][3] is None  # no such order
        utf8 = orjson.loads(rejected[5][4])
        assert utf8["reason"].startswith("unreadable JSON") and "\\xff" in utf8["excerpt"]
        wait_until(lambda: (b := worker.last_beat()) and b.quarantined == len(EXPECTED_REJECTED), 5,
                   "the heartbeat's quarantine count")
        beat = worker.last_beat()
        assert beat is not None and beat.state == "live" and beat.reconnects == 0
        assert len(server.peers) == 1 and worker.error is None
        assert len(rows(db, "SELECT 1 FROM events WHERE origin IN ('snapshot', 'live')")) == len(EXPECTED_ENTITIES)
