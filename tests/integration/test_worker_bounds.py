"""A real worker's snapshot budget against the simulator: over time or entities it is abandoned, the sink untouched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog
from worker_harness import WorkerRun

from polling import wait_until
from shardsync.simulator import Simulator

SimFactory = Callable[..., Simulator]


def test_a_snapshot_over_snapshot_timeout_is_abandoned_until_the_server_is_faster(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """Parts 1 s apart, no end marker, snapshot_timeout 2 s: snapshot_incomplete (snapshot_timeout) on every try,
    nothing written to the sink; once the server sends its parts at once with an end marker, it converges."""
    sim = sim_factory()
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        worker.wait_converged()
    changes = sim.mutate(count=8, remainder=0, divisor=1, deletions=2)
    assert changes
    sim.configure(snapshot_mode="split", split_chunks=5, split_delay=1.0, split_end="none")
    with structlog.testing.capture_logs() as logs, WorkerRun(sim, tmp_path, snapshot_quiet=30.0,
                                                             snapshot_timeout=2.0) as worker:
        logged = len(worker.log_rows())
        wait_until(lambda: sum(e["event"] == "snapshot_incomplete" for e in logs) >= 2, 20, "two abandoned")
        assert {e["bound"] for e in logs if e["event"] == "snapshot_incomplete"} == {"snapshot_timeout"}
        assert len(worker.log_rows()) == logged  # sink untouched
        assert "snapshot incomplete: snapshot_timeout" in (worker.last_beat().last_error or "")  # type: ignore[union-attr]
        sim.configure(split_delay=0.0, split_end="empty")
        worker.wait_live(timeout=15)
        worker.wait_converged()


def test_a_snapshot_over_max_snapshot_entities_is_abandoned_until_it_fits(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """More entities than max_snapshot_entities: abandoned (max_snapshot_entities), nothing stored; once the
    server's snapshot fits, the shard converges."""
    sim = sim_factory()
    sim.inflate(300, text_bytes=10, remainder=0, divisor=1)
    with structlog.testing.capture_logs() as logs, WorkerRun(sim, tmp_path, max_snapshot_entities=300) as worker:
        wait_until(lambda: sum(e["event"] == "snapshot_incomplete" for e in logs) >= 2, 20, "two abandoned")
        assert {e["bound"] for e in logs if e["event"] == "snapshot_incomplete"} == {"max_snapshot_entities"}
        assert worker.sink_entities() == {} and worker.log_rows() == []
        assert worker.state() != "live"
        sim.purge(["order", "fill"], remainder=0, divisor=1)
        assert len(worker.truth()) <= 300
        worker.wait_live(timeout=15)
        worker.wait_converged()
