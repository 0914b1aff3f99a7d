"""A server that resets connections costs reconnects inside the worker, never the worker itself."""

from __future__ import annotations

from collections.abc import Callable

from harness import Daemon, wait_until

from shardsync.simulator import Simulator

RESETS = 20


def test_twenty_tcp_resets_in_a_row_keep_the_worker_and_its_restart_count(
    sim_factory: Callable[..., Simulator], daemon_factory: Callable[..., Daemon]
) -> None:
    """20 server-side RSTs: the same worker pid throughout, restarts 0, every reconnect on the worker's own backoff."""
    sim = sim_factory()
    daemon = daemon_factory(sim, divisor=1)
    shard = daemon.wait_live()[0]
    pid = shard["pid"]
    for n in range(RESETS):
        total = sim.stats()["ws_connections_total"]
        wait_until(lambda: sim.reset(remainder=0), 10, f"a synced socket to reset ({n})")
        # Live again on a new connection (the old one is gone, the snapshot reconciled).
        wait_until(lambda t=total: sim.stats()["ws_connections_total"] > t and sim.connections() == {0: 1}
                   and daemon.shards()[0]["state"] == "live", 15, f"reconnected after reset {n}")
    final = daemon.shards()[0]
    assert final["pid"] == pid
    assert final["restarts"] == 0
    assert not daemon.events("shard_exited")
    ended = daemon.events("session_ended")
    assert len(ended) >= RESETS
    backoff_max = 2.0  # the harness's [supervisor] backoff_max
    assert all(0 <= line["reconnect_in"] <= backoff_max for line in ended), ended
    daemon.wait_converged(0)
