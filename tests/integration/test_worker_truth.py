"""A real worker never writes a false deletion: provisional deletions after an inferred snapshot end, the guard."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import structlog
from worker_harness import WorkerRun

from polling import wait_until
from shardsync.change import Key
from shardsync.simulator import Simulator

SimFactory = Callable[..., Simulator]


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def false_deletions(sim: Simulator, worker: WorkerRun) -> list[tuple[Key, str]]:
    """Snapshot deletions (resync/snapshot) of entities the server had at the moment the worker deleted them."""
    history = sim.history()
    wrong = []
    for origin, entity_type, event_type, ident, received_at in worker.log_rows():
        if event_type != "Deleted" or origin not in ("resync", "snapshot"):
            continue
        assert ident is not None
        at = epoch(received_at)
        spans = history.get((entity_type, ident), [])
        if any(start <= at and (end is None or end > at) for start, end in spans):
            wrong.append(((entity_type, ident), received_at))
    return wrong


@pytest.mark.parametrize("ratio", [1.0, 0.5], ids=["provisional-alone", "with-mass-guard"])
def test_phantom_deletions_of_a_slow_split_snapshot_never_reach_the_sink(
    sim_factory: SimFactory, tmp_path: Path, ratio: float
) -> None:
    """Converged shard, reconnect, split parts 1.5 s apart without an end marker, quiet 1.0 s: not one resync
    Deleted of an entity the server had (history says so for every Deleted), and the sink equals the truth."""
    sim = sim_factory(snapshot_mode="split", split_chunks=3, split_end="empty", event_rate=20, accounts=16)
    with WorkerRun(sim, tmp_path, snapshot_quiet=1.0, deletion_grace=3.0, max_resync_delete_ratio=ratio) as worker:
        worker.wait_live()
        worker.wait_converged(15)
        # The slow server: each part 1.5 s after the previous, and nothing says the last one was the last.
        sim.configure(split_delay=1.5, split_end="none")
        total = sim.stats()["ws_connections_total"]
        assert sim.drop(remainder=0) == 1
        # Live again after the late part made it resync with a doubled quiet period (2 s > 1.5 s).
        wait_until(lambda: "late snapshot part" in (worker.last_beat().last_error or "")  # type: ignore[union-attr]
                   and worker.state() == "live", 30, "live after a late part")
        assert sim.stats()["ws_connections_total"] >= total + 2
        sim.pause()
        worker.wait_converged(15)
        assert false_deletions(sim, worker) == []
        truth = set(worker.truth())
        resync_deleted = {(t, i) for o, t, e, i, _ in worker.log_rows() if o == "resync" and e == "Deleted"}
        assert not resync_deleted & truth


def test_an_end_marker_deletes_at_once(sim_factory: SimFactory, tmp_path: Path) -> None:
    """Split parts 0.2 s apart with an end marker: the deletions of a resync are in the sink long before any
    deletion_grace (30 s here) could have passed, each one of an entity the server no longer had."""
    sim = sim_factory(snapshot_mode="split", split_chunks=3, split_end="empty", split_delay=0.2)
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        worker.wait_converged()
    deleted = sim.purge(["fill"], remainder=0, divisor=1)
    assert deleted
    with WorkerRun(sim, tmp_path, deletion_grace=30.0) as worker:
        worker.wait_live(timeout=15)
        worker.wait_converged(8)
        rows = [r for r in worker.log_rows() if r[0] == "resync" and r[2] == "Deleted"]
        assert {(r[1], r[3]) for r in rows} == {(c.entity_type, c.entity["id"]) for c in deleted}
        assert false_deletions(sim, worker) == []


def test_inferred_deletions_wait_the_grace_then_commit(sim_factory: SimFactory, tmp_path: Path) -> None:
    """A split request answered in one part without a marker completes by the quiet rule: what it lacks is still
    in the sink when the shard goes live, and is deleted (origin resync, the snapshot's time) after the grace."""
    sim = sim_factory()
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        worker.wait_converged()
    deleted = {(c.entity_type, c.entity["id"]) for c in sim.purge(["fill"], remainder=0, divisor=1)}
    assert deleted
    with WorkerRun(sim, tmp_path, deletion_grace=3.0) as worker:
        worker.wait_live()
        live_at = time.time()
        assert deleted <= set(worker.sink_entities())  # held, not deleted
        worker.wait_converged(10)
        assert time.time() - live_at >= 2.0  # the grace, not the next pass
        gone = [r for r in worker.log_rows() if r[0] == "resync" and r[2] == "Deleted"]
        assert {(r[1], r[3]) for r in gone} == deleted
        # Stamped with the snapshot's receive time, not the time they were committed.
        assert len({r[4] for r in gone}) == 1 and abs(epoch(gone[0][4]) - live_at) < 1.0


def test_a_blank_snapshot_deletes_nothing(sim_factory: SimFactory, tmp_path: Path) -> None:
    """The server answers one reconnect with an empty snapshot: the guard holds the mass deletion back,
    resyncs on a new connection, the next snapshot refuses it: no Deleted at all, the sink still the truth."""
    sim = sim_factory()
    with structlog.testing.capture_logs() as logs, WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        worker.wait_converged()
        syncs = len(sim.stats()["syncrequests"])
        sim.blank_snapshot(1, remainder=0, divisor=1)
        assert sim.drop(remainder=0) == 1
        wait_until(lambda: any(e["event"] == "mass_delete_refused" for e in logs), 15, "mass_delete_refused")
        worker.wait_live(after_reconnects=2)
        worker.wait_converged()
        assert [r for r in worker.log_rows() if r[2] == "Deleted"] == []
        assert len(sim.stats()["syncrequests"]) == syncs + 2
    suspected = [e for e in logs if e["event"] == "mass_delete_suspected"]
    refused = [e for e in logs if e["event"] == "mass_delete_refused"]
    assert len(suspected) == 1 and suspected[0]["deletions"] == suspected[0]["entities"] > 10
    assert refused[0]["refused"] == suspected[0]["deletions"] and refused[0]["confirmed"] == 0


def test_a_real_mass_deletion_is_applied_once_confirmed(sim_factory: SimFactory, tmp_path: Path) -> None:
    """Most of a shard really deleted while the worker was away: held back once, confirmed by the second
    snapshot, then applied (mass_delete_confirmed) and the sink equals the truth."""
    sim = sim_factory()
    sim.inflate(60, text_bytes=10, remainder=0, divisor=1)
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        worker.wait_converged()
        entities = len(worker.sink_entities())
    deleted = {(c.entity_type, c.entity["id"]) for c in sim.purge(["order", "fill", "position"], remainder=0)}
    assert len(deleted) > entities / 2 > 10
    with structlog.testing.capture_logs() as logs, WorkerRun(sim, tmp_path) as worker:
        worker.wait_live(timeout=15)
        worker.wait_converged(10)
        gone = {(r[1], r[3]) for r in worker.log_rows() if r[0] == "resync" and r[2] == "Deleted"}
        assert gone == deleted
        assert false_deletions(sim, worker) == []
    confirmed = [e for e in logs if e["event"] == "mass_delete_confirmed"]
    assert len(confirmed) == 1 and confirmed[0]["confirmed"] == len(deleted) and confirmed[0]["refused"] == 0
