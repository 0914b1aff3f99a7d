"""64 shards against one simulator: start-up, a responsive parent loop and the connect permits, from outside."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from harness import Daemon, wait_until

from shardsync.simulator import Simulator

SHARDS = 64
MAX_CONNECTS = 2


def test_sixty_four_shards_start_with_bounded_handshakes_and_a_responsive_parent(
        sim_factory: Callable[..., Simulator], daemon_factory: Callable[..., Daemon]) -> None:
    """64 shards all go live, every /status answer while they start takes < 2 s, and the simulator never sees
    more than max_concurrent_connects WebSocket handshakes at once."""
    sim = sim_factory(accounts=128, users=16)
    daemon = daemon_factory(sim, divisor=SHARDS, sections={
        # Heartbeats less often and a longer hang limit: 64 start-ups share two cores.
        "supervisor": {"max_concurrent_connects": MAX_CONNECTS, "connect_spacing": 0.0,
                       "heartbeat_interval": 0.5, "heartbeat_timeout": 10.0},
    })

    assert daemon.status_port  # the listener is up (logged) before the first shard is forked
    timings: list[float] = []

    def all_live() -> dict[int, dict[str, Any]] | None:
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.output()[-3000:]
        started = time.monotonic()
        shards = daemon.shards()
        timings.append(time.monotonic() - started)
        live = len(shards) == SHARDS and all(s["state"] == "live" for s in shards.values())
        return shards if live else None

    shards = wait_until(all_live, 90, f"{SHARDS} shards live")
    assert sorted(shards) == list(range(SHARDS))
    assert len(timings) >= 5, "the status endpoint was polled while the shards started"
    # The parent never blocks, but it shares two cores with 64 workers importing and connecting at once: on a
    # quiet machine the slowest answer is 0.6-0.8 s (the same before and after issue 16), on a busy one it
    # passed 1.2 s. A loop blocked on anything (a handshake, a login, a pipe) takes seconds more than that.
    assert max(timings) < 2.0, f"slowest /status answer during start-up: {max(timings):.3f} s"

    stats = sim.stats()
    assert {int(k): v for k, v in stats["connections"].items()} == {r: 1 for r in range(SHARDS)}
    assert stats["ws_connections_total"] == SHARDS
    assert 1 <= stats["peak_handshakes"] <= MAX_CONNECTS, stats["peak_handshakes"]
    assert stats["handshakes"] == 0
    assert stats["logins"] == 1  # one token for every shard

    assert daemon.events("ready")[0]["all_live"] is True
    for remainder in (0, 31, 63):
        daemon.wait_converged(remainder)
