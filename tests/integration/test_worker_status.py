"""A real worker's freshness row (shard_status) and retention: live, refreshed while idle, a new session per sync."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from worker_harness import WorkerRun

from polling import wait_until
from shardsync.simulator import Simulator
from shardsync.sinks import Freshness, SinkState
from shardsync.sinks.base import iso_utc

SimFactory = Callable[..., Simulator]


def row_of(worker: WorkerRun, kind: str) -> Freshness | None:
    if kind == "sqlite":
        return worker.status_row()
    sidecar = Path(worker.options.sink_path) / "shard-000-of-001.status.json"
    try:
        return Freshness.from_json(orjson.loads(sidecar.read_bytes()))
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_the_status_row_says_live_stays_fresh_changes_session_and_says_stopped(
    sim_factory: SimFactory, tmp_path: Path, kind: str
) -> None:
    """Live with a session and snapshot_at; while idle (no batch) last_event_at keeps moving with the server's
    h frames; a reconnect brings a new session; Stop leaves stopped."""
    sim = sim_factory()
    worker = WorkerRun(sim, tmp_path, sink_kind=kind).start()
    try:
        worker.wait_live()
        live = wait_until(lambda: (r := row_of(worker, kind)) and r.state == SinkState.LIVE and r, 5, "a live row")
        assert live.session and live.snapshot_at and live.last_commit_at and live.last_event_at
        assert (live.remainder, live.divisor, live.expression) == (0, 1, "modAccountId")
        # Nothing changes on the server: no batch; the row is refreshed from heartbeat to heartbeat anyway.
        fresher = wait_until(lambda: (r := row_of(worker, kind)) and r.last_event_at != live.last_event_at and r,
                             8, "last_event_at moving while idle")
        assert fresher.last_event_at > live.last_event_at and fresher.last_commit_at == live.last_commit_at  # type: ignore[operator]
        assert fresher.session == live.session and fresher.snapshot_at == live.snapshot_at
        sim.drop(remainder=0)
        worker.wait_live(after_reconnects=1)
        again = wait_until(lambda: (r := row_of(worker, kind)) and r.state == SinkState.LIVE
                           and r.session != live.session and r, 5, "a new session")
        assert again.snapshot_at is not None and again.snapshot_at >= live.snapshot_at  # type: ignore[operator]
    finally:
        worker.stop()
    stopped = row_of(worker, kind)
    assert stopped is not None and stopped.state == SinkState.STOPPED and stopped.session == again.session


def test_a_restarted_worker_carries_the_last_row_forward_until_it_syncs(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """The next worker's first rows keep snapshot_at of the last snapshot (the data is that old), then its own."""
    sim = sim_factory()
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        first = wait_until(lambda: (r := worker.status_row()) and r.state == SinkState.LIVE and r, 5, "live row")
    sim.refuse(3.0)  # the next worker cannot connect for a while
    with WorkerRun(sim, tmp_path) as worker:
        waiting = wait_until(lambda: (r := worker.status_row()) and r.state != SinkState.STOPPED and r, 5, "row")
        assert waiting.state in (SinkState.RESYNCING, SinkState.BACKOFF)
        assert waiting.snapshot_at == first.snapshot_at and waiting.session == first.session
        worker.wait_live(timeout=15)
        later = wait_until(lambda: (r := worker.status_row()) and r.state == SinkState.LIVE and r, 5, "live row")
        assert later.session != first.session and later.snapshot_at > first.snapshot_at  # type: ignore[operator]


def test_old_changes_are_pruned_while_the_socket_is_quiet(sim_factory: SimFactory, tmp_path: Path) -> None:
    """events_retention 1 s: once quiet, the change log loses every row older than that (sqlite keeps its newest
    row), entities untouched."""
    sim = sim_factory(event_rate=50)
    with WorkerRun(sim, tmp_path, events_retention=1.0) as worker:
        worker.wait_live()
        wait_until(lambda: len(worker.log_rows()) > 100, 10, "a change log")
        sim.pause()
        worker.wait_converged()
        paused = time.time()

        def old_rows() -> int:
            cutoff = iso_utc(time.time() - 1.5)
            return sum(1 for row in worker.log_rows() if row[4] < cutoff)

        wait_until(lambda: time.time() > paused + 2 and old_rows() <= 1, 15, "old rows pruned")
        worker.wait_converged()
