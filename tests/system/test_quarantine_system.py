"""The real daemon, forked workers and their log: poison stays in its shard, a flood of events in the change log."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from harness import Daemon, wait_until

from shardsync.simulator import Simulator


def count(daemon: Daemon, remainder: int, where: str) -> int:
    path = daemon.db_path(remainder)
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute(f"SELECT count(*) FROM events WHERE {where}").fetchone()[0])  # noqa: S608 - tests
    finally:
        conn.close()


def test_poison_and_a_flood_of_unknown_events_cost_no_worker_and_no_log_flood(
    sim_factory: Callable[..., Simulator], daemon_factory: Callable[..., Daemon]
) -> None:
    """Two shards; a 2000-deep order in shard 1's snapshot and a 2**63 id sent live: both shards live, same
    pids, no restart, sink == truth, both poisons rejected rows; then 10,000 unknown events per shard: all in
    the change log, at most a few system_event lines per worker in the daemon's log."""
    sim = sim_factory(batch=50)
    deep = sim.poison("deep", remainder=1, divisor=2)
    daemon = daemon_factory(sim, divisor=2)
    shards = daemon.wait_live()
    pids = {r: s["pid"] for r, s in shards.items()}
    big = sim.poison("bigid", remainder=0, divisor=2, in_snapshot=False)
    wait_until(lambda: count(daemon, 0, "origin = 'rejected'") == 1, 10, "shard 0's rejected row")
    assert count(daemon, 1, f"origin = 'rejected' AND id = {deep['id']}") == 1
    for remainder in (0, 1):
        daemon.wait_converged(remainder)
    assert big["id"] == 2**63

    sim.call(lambda s: [s.system_event("mysteryEvent", {"n": n}) for n in range(10_000)])
    for remainder in (0, 1):
        wait_until(lambda r=remainder: count(daemon, r, "origin = 'system'") == 10_000, 60,
                   f"shard {remainder}'s 10,000 system rows")
    lines = [line for line in daemon.logs() if line.get("event") in ("system_event", "log_lines_held")]
    assert 2 <= len(lines) <= 6, lines  # one per worker, and perhaps a summary each
    quarantined = [line for line in daemon.logs() if line.get("event") == "entity_quarantined"]
    assert {line["shard"] if "shard" in line else line.get("remainder") for line in quarantined} == {0, 1}
    final = daemon.shards()
    assert {r: s["pid"] for r, s in final.items()} == pids
    assert all(s["restarts"] == 0 and s["state"] == "live" for s in final.values())
    assert not daemon.events("shard_exited")
