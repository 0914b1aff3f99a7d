"""Issue 12, item 3 (the parent's side): a 2 MB server error page on the handshake or on a syncrequest costs no
more than a clipped line, in the log and in /status, and the daemon (2 shards) never exits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hostile_server import HostileServer, Peer, http_response

from shardsync.simulator import Simulator
from system.harness import Daemon, wait_until

Hostile = Callable[..., HostileServer]
PAGE = b"<html>" + b"Internal error. " * (2 * 1024 * 1024 // 16) + b"</html>"  # 2 MiB
LINE_LIMIT = 4096  # one log record is one write below PIPE_BUF


def error_page_on_the_handshake(peer: Peer) -> None:
    peer.read_request()
    peer.send(http_response(500, {"Content-Type": "text/html"}, PAGE))


def error_on_the_syncrequest(peer: Peer) -> None:
    if not peer.open_tradovate():
        return
    sync = peer.wait_text(b"user/syncrequest\n")
    if sync is None:
        return
    request_id = sync.frame.payload.split(b"\n")[1]
    text = PAGE.decode().replace('"', "'")
    peer.text(b'a[{"s":400,"i":' + request_id + b',"d":"' + text.encode() + b'"}]')
    peer.wait_gone(10)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(event_rate=0, accounts=8, users=2).start()
    yield simulator
    simulator.stop()


@pytest.mark.parametrize("script", [error_page_on_the_handshake, error_on_the_syncrequest],
                         ids=["handshake", "syncrequest"])
def test_a_2_mb_error_page_costs_a_clipped_line_and_never_the_daemon(
    hostile: Hostile, sim: Simulator, tmp_path: Path, script: Callable[[Peer], None]
) -> None:
    """Login at the simulator, the WebSocket at a server answering a 2 MB error: the shards keep reconnecting
    on their own backoff (no worker crash, no restart), every log line stays under 4 KiB, /status shows a
    clipped last_error, and the daemon is still running (never exit 3)."""
    server = hostile(script)
    daemon = Daemon(tmp_path, sim, divisor=2, sections={"tradovate": {"ws_url": server.url()},
                                                       "supervisor": {"backoff_max": 1.0}}).start()
    try:
        wait_until(lambda: len(server.peers) >= 6, 40, "a few reconnects of each shard")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # some more time under the error pages
            assert daemon.proc is not None and daemon.proc.poll() is None, daemon.output()[-2000:]
            time.sleep(0.1)

        def both_errored() -> list[dict[str, object]] | None:
            shards = list(daemon.shards().values())
            return shards if all(s["last_error"] for s in shards) else None

        shards = wait_until(both_errored, 10, "both shards report their error")
        for shard in shards:
            assert shard["restarts"] == 0 and shard["pid"] is not None
            assert len(str(shard["last_error"])) <= 500
            assert ("500" if script is error_page_on_the_handshake else "400") in str(shard["last_error"])
        assert daemon.proc is not None and daemon.proc.poll() is None
        raw = daemon.log_path.read_bytes()
        lines = raw.splitlines()
        assert max(len(line) for line in lines) < LINE_LIMIT
        # An excerpt at most (the worker's session_ended carries ~1 KB of it), never the page.
        assert max(line.count(b"Internal error.") for line in lines) < 100
        assert not daemon.events("global_breaker_tripped") and not daemon.events("worker_pipe_corrupt")
    finally:
        code = daemon.stop()
    assert code == 0
