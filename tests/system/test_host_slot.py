"""One config file, several hosts: `shardsync run --host-index I --host-count N` runs host I's block only."""

from __future__ import annotations

import signal
from collections.abc import Callable

from harness import PASSWORD, SECRET, USERNAME, Daemon, wait_until

from shardsync.simulator import Simulator

SimFactory = Callable[..., Simulator]
DaemonFactory = Callable[..., Daemon]
ENV_CREDENTIALS = {"SHARDSYNC_USERNAME": USERNAME, "SHARDSYNC_PASSWORD": PASSWORD, "SHARDSYNC_SECRET": SECRET}


def test_two_hosts_sharing_one_file_partition_the_shards(sim_factory: SimFactory,
                                                        daemon_factory: DaemonFactory) -> None:
    """Two daemons on the same remainders = "all" file, host 0 and host 1 (given as a pod name) of 2, run 0-1 and
    2-3: the simulator sees exactly one connection per remainder. Host 1 takes its credentials from SHARDSYNC_*,
    so its slot also survives the re-exec that drops them."""
    sim = sim_factory()
    first = daemon_factory(sim, name="host0", args=["--host-index", "0", "--host-count", "2"])
    second = daemon_factory(sim, name="host1", credentials=False, env=ENV_CREDENTIALS,
                            args=["--host-index", "shardsync-1", "--host-count", "2"])
    assert sorted(first.wait_live()) == [0, 1]
    assert sorted(second.wait_live()) == [2, 3]
    assert second.events("supervisor_started")[0]["remainders"] == [2, 3]
    wait_until(lambda: sim.connections() == {0: 1, 1: 1, 2: 1, 3: 1}, 10, "one connection per remainder")


def test_a_file_that_names_its_remainders_is_refused_with_the_flags(sim_factory: SimFactory,
                                                                   daemon_factory: DaemonFactory) -> None:
    """`run --host-index` on a file with remainders = "0-1" exits 78 naming sync.remainders, and never connects."""
    sim = sim_factory()
    daemon = daemon_factory(sim, remainders="0-1", args=["--host-index", "0", "--host-count", "2"])
    assert daemon.wait_exit() == 78
    errors = [line["error"] for line in daemon.events("config_invalid")]
    assert any('sync.remainders: must be "all"' in error for error in errors), errors
    assert sim.stats()["ws_connections_total"] == 0


def test_the_slot_survives_a_reload(sim_factory: SimFactory, daemon_factory: DaemonFactory) -> None:
    """SIGHUP re-reads the shared file with the same slot: host 1 of 2 keeps 2-3 and starts no shard of host 0."""
    sim = sim_factory()
    daemon = daemon_factory(sim, args=["--host-index", "1", "--host-count", "2"])
    before = daemon.wait_live()
    assert sorted(before) == [2, 3]
    daemon.signal(signal.SIGHUP)
    reloaded = wait_until(lambda: daemon.events("reloaded"), 10, "the reload")
    assert reloaded[0]["added"] == [] and reloaded[0]["removed"] == []
    assert daemon.pids() == {r: s["pid"] for r, s in before.items()}
    assert sim.connections() == {2: 1, 3: 1}
