"""A real worker's sqlite commits on a quiet stream: durable through the checkpointer, never an fsync of their own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from worker_harness import WorkerRun

from polling import wait_until
from shardsync.simulator import Simulator
from shardsync.sinks.sqlite_wal import restarts


def test_a_quiet_live_shard_commits_without_starting_the_wal_over(sim_factory: Callable[..., Simulator],
                                                                  tmp_path: Path) -> None:
    """Live events a few a second, each committed alone with pauses between: the WAL never starts over (each start
    over is an fsync by the worker's own thread; the checkpointer this replaced copied the WAL at every pause, so
    nearly every commit started it over), and the changes are all there."""
    sim = sim_factory(event_rate=8)
    with WorkerRun(sim, tmp_path) as worker:
        live = worker.wait_live()
        start = len(worker.log_rows())
        wait_until(lambda: len(worker.log_rows()) >= start + 20, 20, "twenty live changes committed")

        def commits_since_live() -> int:
            beat = worker.last_beat()  # heartbeats lag the commits by up to an interval: polled, not read once
            return 0 if beat is None else beat.commits[-1] - live.commits[-1]

        wait_until(lambda: commits_since_live() >= 10, 20, "ten commits since live reported")
        assert restarts(str(worker.db_path())) == 0
        sim.pause()
        worker.wait_converged(10)
        assert restarts(str(worker.db_path())) == 0
