"""Issue 12, item 6: under ping and fragment floods recv returns in bounded slices, so the loop keeps sending ``[]``.

The driver below is the worker's receive loop in miniature (send ``[]`` when
due, otherwise receive until it is due); the hostile server records when
each ``[]`` arrived, which is what Tradovate would see.  The last test runs
the real worker and watches its ``[]`` frames and its heartbeats.
"""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hostile_server import HostileServer, Peer

from integration.worker_harness import WorkerRun
from polling import wait_until
from shardsync import ipc
from shardsync.worker.connection import Connection, ConnectionLost, MessageTooLarge
from wsframes import frame

Hostile = Callable[..., HostileServer]
KIB, MIB = 1 << 10, 1 << 20
#: How late a ``[]`` may reach the server, or a recv return past its timeout, on a loaded 2-core machine.
SLACK = 0.3


@dataclass
class Drive:
    """What the driver saw: messages, the worst overshoot of a recv past its timeout, how it ended."""

    messages: list[object] = field(default_factory=list)
    overshoot: float = 0.0
    recvs: int = 0
    error: ConnectionLost | None = None


def drive(conn: Connection, seconds: float, every: float) -> Drive:
    """Send ``[]`` every ``every`` s and receive in between, for ``seconds`` or until the connection fails."""
    seen = Drive()
    end = time.monotonic() + seconds
    next_ping = time.monotonic()
    try:
        while (now := time.monotonic()) < end:
            if now >= next_ping:
                conn.send("[]")
                next_ping = now + every
            timeout = max(0.001, next_ping - now)
            item = conn.recv(timeout)
            seen.recvs += 1
            seen.overshoot = max(seen.overshoot, time.monotonic() - now - timeout)
            if item is not None:
                seen.messages.append(item)
    except ConnectionLost as exc:
        seen.error = exc
    return seen


def heartbeat_gaps(peer: Peer, since: float, until: float) -> list[float]:
    """Gaps between the client's ``[]`` frames that reached the server between ``since`` and ``until``."""
    times = [a.at for a in peer.texts() if a.frame.payload == b"[]" and since <= a.at <= until]
    return [b - a for a, b in zip([since, *times], [*times, until], strict=True)]


def flood_until_gone(peer: Peer, block: bytes, pause: float = 0.0) -> None:
    while peer.send(block):
        if pause and peer.server.stopped.wait(pause):
            return


def ping_flood(peer: Peer) -> None:
    """After 'o', pings (1000 per send) as fast as the client takes them."""
    peer.accept_websocket(then=frame(0x81, b"o"))
    flood_until_gone(peer, b"".join(frame(0x89, b"ping%04d" % i) for i in range(1000)))


def test_a_ping_flood_never_holds_the_loop(hostile: Hostile) -> None:
    """5 s of pings flat out: every recv returns by its deadline, [] reaches the server every 0.5 s, pongs go back."""
    server = hostile(ping_flood)
    conn = Connection.open(server.url(), handshake_timeout=5)
    try:
        started = time.monotonic()
        seen = drive(conn, 5.0, 0.5)
        ended = time.monotonic()
    finally:
        conn.close(timeout=0.2)
    assert seen.error is None and seen.messages == [b"o"]
    assert seen.overshoot < SLACK
    peer = server.peer()
    assert peer.wait_gone(5)  # all the client sent is recorded
    assert max(heartbeat_gaps(peer, started, ended)) < 0.5 + SLACK
    assert conn.control_frames > 10_000  # it really was a flood, and every ping was parsed
    pongs = [a for a in peer.client_frames() if a.frame.opcode == 0xA]
    assert pongs and all(a.frame.payload.startswith(b"ping") for a in pongs)


def endless_fragments(peer: Peer) -> None:
    """A text message of 2 KiB fragments that never ends, about 10 MB/s."""
    peer.accept_websocket(then=frame(0x81, b"o") + frame(0x01, b"a[" + b"f" * (2 * KIB - 2)))
    flood_until_gone(peer, frame(0x00, b"f" * 2 * KIB) * 50, pause=0.01)


def test_endless_fragments_keep_the_loop_breathing_until_the_total_is_refused(hostile: Hostile) -> None:
    """Fragments without end: [] keeps reaching the server while they come, then the 64 MiB total is refused."""
    server = hostile(endless_fragments)
    conn = Connection.open(server.url(), handshake_timeout=5)
    try:
        started = time.monotonic()
        seen = drive(conn, 60.0, 0.5)
        ended = time.monotonic()
    finally:
        conn.close(timeout=0.2)
    assert isinstance(seen.error, MessageTooLarge) and "fragmented message over 67108864" in str(seen.error)
    assert seen.messages == [b"o"] and seen.overshoot < SLACK
    assert ended - started > 2.0  # the flood lasted long enough to need many slices
    assert server.peer().wait_gone(5)
    assert max(heartbeat_gaps(server.peer(), started, ended - 0.1)) < 0.5 + SLACK


def fragmented_message(size: int) -> bytes:
    """``a[...]`` of ``size`` bytes in 2 KiB fragments, a ping after every 100th."""
    payload = b"a[" + b"9" * (size - 3) + b"]"
    pieces = [payload[i : i + 2 * KIB] for i in range(0, size, 2 * KIB)]
    out = [frame(0x01, pieces[0])]
    for i, piece in enumerate(pieces[1:], 1):
        out.append(frame(0x80 if i == len(pieces) - 1 else 0x00, piece))
        if i % 100 == 0:
            out.append(frame(0x89, b"mid"))
    return b"".join(out)


@pytest.mark.parametrize(("limit", "whole"), [(64 * MIB, True), (16 * MIB, False)])
def test_a_20_mib_message_in_2_kib_fragments_arrives_in_slices_or_is_refused(
    hostile: Hostile, limit: int, whole: bool
) -> None:
    """20 MiB in 2 KiB fragments flat out: recv returns in short slices; whole under 64 MiB, refused over 16 MiB."""
    wire = fragmented_message(20 * MIB)

    def script(peer: Peer) -> None:
        peer.accept_websocket(then=frame(0x81, b"o"))
        peer.send(wire)
        peer.wait_gone(30)

    server = hostile(script)
    conn = Connection.open(server.url(), handshake_timeout=5, max_message_bytes=limit)
    longest = 0.0
    items: list[object] = []
    try:
        deadline = time.monotonic() + 30
        while len(items) < 2 and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                item = conn.recv(1.0)
            except MessageTooLarge as exc:
                items.append(exc)
                break
            longest = max(longest, time.monotonic() - started)
            if item is not None:
                items.append(item)
    finally:
        conn.close(timeout=0.2)
    assert items[0] == b"o"
    if whole:
        assert items[1] == b"a[" + b"9" * (20 * MIB - 3) + b"]"
        assert longest < 0.2  # no recv waited for the whole message
    else:
        assert isinstance(items[1], MessageTooLarge) and items[1].limit == 16 * MIB


def test_a_real_worker_keeps_sending_heartbeats_under_a_ping_flood(hostile: Hostile, tmp_path: Path) -> None:
    """The worker, authorized and then flooded with pings: [] every 2.5 s reaches the server, heartbeats continue."""
    flooding, enough = threading.Event(), threading.Event()

    def script(peer: Peer) -> None:
        if peer.open_tradovate() and peer.wait_text(b"user/syncrequest\n"):
            flooding.set()
            block = b"".join(frame(0x89, b"p") for _ in range(1000))
            while not enough.is_set() and peer.send(block):
                pass
        peer.wait_gone(20)

    server = hostile(script)
    beats: list[float] = []
    stand_in = types.SimpleNamespace(ws_url=server.url())
    worker = WorkerRun(stand_in, tmp_path, token="hostile-token", idle_timeout=60.0)  # type: ignore[arg-type]  # noqa: S106
    recorded = worker._on_message

    def on_message(message: ipc.Message) -> None:
        if isinstance(message, ipc.Heartbeat):
            beats.append(time.monotonic())
        recorded(message)

    worker._on_message = on_message  # type: ignore[method-assign]
    with worker:
        wait_until(flooding.is_set, 10, "the flood to start")
        started = time.monotonic()
        wait_until(lambda: time.monotonic() - started > 6.5, 10, "6.5 s of flood")
        ended = time.monotonic()
        enough.set()
        peer = server.peer()
        assert len(server.peers) == 1  # no reconnect: the flood did not end the session
    gaps = heartbeat_gaps(peer, started, ended)
    assert len(gaps) >= 3 and max(gaps) < 2.5 + SLACK
    during = [t for t in beats if started <= t <= ended]
    assert len(during) >= 6.5 / worker.options.heartbeat_interval / 2  # heartbeats to the parent kept coming
    assert max(b - a for a, b in zip([started, *during], [*during, ended], strict=True)) < 1.0


def test_under_a_ping_flood_the_worker_obeys_stop_and_counts_pings_as_liveness(hostile: Hostile,
                                                                                 tmp_path: Path) -> None:
    """Pings alone keep an authorized socket alive past idle_timeout, and a Stop sent mid-flood ends the worker."""
    flooding = threading.Event()

    def script(peer: Peer) -> None:
        if peer.open_tradovate() and peer.wait_text(b"user/syncrequest\n"):
            flooding.set()
            flood_until_gone(peer, b"".join(frame(0x89, b"p") for _ in range(1000)))

    server = hostile(script)
    stand_in = types.SimpleNamespace(ws_url=server.url())
    worker = WorkerRun(stand_in, tmp_path, token="hostile-token", idle_timeout=1.0)  # type: ignore[arg-type]  # noqa: S106
    worker.start()
    wait_until(flooding.is_set, 10, "the flood to start")
    # Three idle timeouts of nothing but pings: still the first connection.
    seen = worker.messages.copy
    wait_until(lambda: sum(isinstance(m, ipc.Heartbeat) for m in seen()) >= 20, 15, "3+ s of heartbeats")
    assert len(server.peers) == 1
    assert all(isinstance(m, ipc.Heartbeat) and not m.reconnects for m in seen() if isinstance(m, ipc.Heartbeat))
    asked = time.monotonic()
    worker.give(ipc.Stop())
    worker.thread.join(5.0)
    assert not worker.thread.is_alive(), "the worker ignored Stop while the flood filled its read-ahead"
    assert time.monotonic() - asked < 2.0  # the close handshake waits up to 1 s for the server
    worker.stop()
