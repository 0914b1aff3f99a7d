"""Issue 12, item 3 (the transport): a message's size is checked against its frame header before the payload is read."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

from hostile_server import HostileServer, Peer

from integration.worker_harness import WorkerRun
from polling import wait_until
from wsframes import frame, header

Hostile = Callable[..., HostileServer]
PROBE = Path(__file__).with_name("probe.py")
MIB = 1 << 20


def huge_frame(peer: Peer) -> None:
    """After 'o', a text frame announcing 200 MiB, then its payload as fast as the client takes it."""
    peer.accept_websocket(then=frame(0x81, b"o") + header(0x81, 200 * MIB))
    block = b"a" * MIB
    for _ in range(200):
        if not peer.send(block):
            return


def test_a_200_mib_frame_is_refused_from_its_header_and_memory_stays_small(hostile: Hostile) -> None:
    """Announced 200 MiB, payload streaming: MessageTooLarge at once; peak RSS grows < 8 MiB; little was taken."""
    server = hostile(huge_frame)
    result = subprocess.run([sys.executable, str(PROBE), server.url(), "--for", "20"], capture_output=True,
                            text=True, timeout=60, check=True)
    report = json.loads(result.stdout)
    assert report["opened"] and report["messages"] == 1  # the "o"
    assert report["error"] == "MessageTooLarge"
    assert "frame of 209715200 bytes announced, over 67108864" in report["message"]
    assert report["elapsed"] < 5
    grown = report["hwm_after_kib"] - report["hwm_before_kib"]
    assert grown < 8 * 1024, f"peak RSS grew {grown} KiB"
    peer = server.peer()
    assert peer.wait_gone(5)
    assert peer.sent < 32 * MIB  # what the kernel buffers took before the client closed: nowhere near 200 MiB


def test_the_worker_closes_logs_and_reconnects_after_an_oversized_frame(hostile: Hostile, tmp_path: Path) -> None:
    """A real worker: after the 200 MiB header its session ends naming the limit, and it connects again."""

    def script(peer: Peer) -> None:
        if peer.open_tradovate() and peer.wait_text(b"user/syncrequest\n"):
            peer.send(header(0x81, 200 * MIB) + b"x" * MIB)
        peer.wait_gone(10)

    server = hostile(script)
    stand_in = types.SimpleNamespace(ws_url=server.url())
    with WorkerRun(stand_in, tmp_path, token="hostile-token") as worker:  # type: ignore[arg-type]  # noqa: S106
        wait_until(lambda: len(server.peers) >= 2, 20, "a second connection")
        beat = wait_until(lambda: (b := worker.last_beat()) and b.reconnects >= 1 and b, 10, "a reconnect counted")
        assert "over 67108864" in (beat.last_error or "")
        first = server.peer(0)
        closes = [a.frame for a in first.client_frames() if a.frame.opcode == 0x8]
        assert closes and closes[0].payload[:2] == (1009).to_bytes(2, "big")  # "message too big" said on close
    assert worker.error is None
