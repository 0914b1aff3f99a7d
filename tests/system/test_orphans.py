"""Workers die with their parent even while blocked in a WebSocket handshake."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from harness import Daemon, alive, children, wait_until

from shardsync.simulator import Simulator


def test_parent_sigkill_ends_workers_stuck_in_a_handshake(tmp_path: Path) -> None:
    """With the server silent mid-handshake (30 s timeout), SIGKILL of the parent ends every worker within 2 s."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # accepts TCP in the kernel, never answers the upgrade
    port = silent.getsockname()[1]
    try:
        with Simulator(event_rate=0, accounts=8, users=4) as sim:
            sections = {"tradovate": {"ws_url": f"ws://127.0.0.1:{port}/v1/websocket", "handshake_timeout": 30.0}}
            daemon = Daemon(tmp_path, sim, divisor=2, sections=sections).start()
            try:
                shards = wait_until(
                    lambda: all(s["state"] == "connecting" for s in daemon.shards().values()) and daemon.shards(),
                    20, "both workers blocked in the handshake",
                )
                workers = [s["pid"] for s in shards.values()]
                assert sorted(workers) == sorted(children(daemon.pid))
                daemon.signal(signal.SIGKILL)
                daemon.wait_exit(5)
                wait_until(lambda: not any(alive(pid) for pid in workers), 2.0, "every worker gone")
            finally:
                daemon.stop()
    finally:
        silent.close()
