"""Issue 12 item 3 (the snapshot budget): a snapshot that never ends is abandoned at its bound, memory stays bounded."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import orjson
from hostile_server import HostileServer, Peer

from wsframes import frame

Hostile = Callable[..., HostileServer]
PROBE = Path(__file__).with_name("worker_probe.py")
MIB = 1 << 20
#: Connections that get a snapshot without end before the server behaves.
ENDLESS = 3
PADDING = "x" * 200


def endless_then_whole(sent: list[int]) -> Callable[[Peer], None]:
    """The first ENDLESS connections: same-id parts of fresh orders, back to back, never an end marker
    (``sent`` counts their bytes); later ones: one part of 10 orders, an end marker, then h frames."""
    ids = itertools.count(1)
    lock = threading.Lock()
    connections = itertools.count()

    def script(peer: Peer) -> None:
        if not peer.open_tradovate():
            return
        arrival = peer.wait_text(b"user/syncrequest\n")
        if arrival is None:
            return
        rid = arrival.frame.payload.split(b"\n")[1].decode()
        if next(connections) < ENDLESS:
            while not peer.client_gone.is_set() and not peer.stopping:
                with lock:
                    orders = [{"id": next(ids), "text": PADDING} for _ in range(250)]
                data = frame(0x81, b"a" + orjson.dumps([{"s": 200, "i": int(rid), "d": {"orders": orders}}]))
                if not peer.send(data):
                    return
                with lock:
                    sent[0] += len(data)
            return
        orders = [{"id": n, "text": "ok"} for n in range(1, 11)]
        peer.text(b"a" + orjson.dumps([{"s": 200, "i": int(rid), "d": {"orders": orders}},
                                       {"s": 200, "i": int(rid), "d": {}}]))
        while not peer.client_gone.wait(0.5) and not peer.stopping:
            if not peer.text(b"h"):
                return

    return script


def test_a_snapshot_that_never_ends_is_abandoned_at_max_snapshot_bytes_with_memory_bounded(
    hostile: Hostile, tmp_path: Path
) -> None:
    """Parts without end, as fast as the worker reads: each session is abandoned (snapshot_incomplete,
    max_snapshot_bytes 4 MiB), peak RSS grows less than 64 MiB over 3 such sessions, the sink stays untouched,
    and once the server behaves the worker goes live with exactly its 10 entities."""
    sent = [0]
    server = hostile(endless_then_whole(sent))
    result = subprocess.run(
        [sys.executable, str(PROBE), server.url(), str(tmp_path), "--for", "60", "--max-snapshot-bytes",
         str(4 * MIB)], capture_output=True, text=True, timeout=120, check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["incomplete"] == ["max_snapshot_bytes"] * ENDLESS, report
    assert sent[0] >= ENDLESS * 4 * MIB  # it really was that much, and more would have come
    grown = report["hwm_after_kib"] - report["hwm_before_kib"]
    assert grown < 64 * 1024, f"peak RSS grew {grown} KiB"
    assert report["live"] and report["entities"] == 10 and report["reconnects"] == ENDLESS, report
    assert report["stopped"]
