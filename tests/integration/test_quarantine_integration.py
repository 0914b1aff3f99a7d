"""Issue 12, items 4 and 13: a poison entity is that entity's problem; a flood of unknown events floods nothing.

The real worker (on a thread) against the simulator's ``poison`` knob: for
each kind (``deep``: 2000 levels, beyond what orjson parses; ``bigid``: id
2**63; ``badtype``: a string id), in a snapshot and live, the shard reaches
live, its sink equals the truth (which never holds poison), the poison is
in the change log with origin ``rejected`` and not in ``entities``, the
worker neither crashes nor resyncs because of it, and its heartbeat counts
it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from worker_harness import WorkerRun

from polling import wait_until
from shardsync.simulator import Simulator

SimFactory = Callable[..., Simulator]
KINDS = ("deep", "bigid", "badtype")


def rejected_rows(worker: WorkerRun) -> list[dict[str, Any]]:
    """The shard's rejected change-log rows, each as a dict with its data parsed."""
    if not worker.db_path().exists():
        return []
    conn = sqlite3.connect(f"file:{worker.db_path()}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT entity_type, event_type, id, account_id, data FROM events "
                            "WHERE origin = 'rejected' ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [{"entity_type": t, "event_type": e, "id": i, "account_id": a, "data": orjson.loads(d)}
            for t, e, i, a, d in rows]


def expected_id(poison: dict[str, Any]) -> int | None:
    """The id a rejected row keeps: the entity's own when a column can hold it."""
    return poison["id"] if poison["kind"] == "deep" else None


def check_rejected(row: dict[str, Any], poison: dict[str, Any], event_type: str) -> None:
    assert (row["entity_type"], row["event_type"]) == ("order", event_type)
    assert row["id"] == expected_id(poison) and row["account_id"] == poison["accountId"]
    data = row["data"]
    if poison["kind"] == "deep":
        assert data["reason"] == "unreadable JSON (depth limit exceeded)"
        assert data["fields"]["id"] == poison["id"] and data["excerpt"].startswith("{")
    else:
        assert data["entity"]["id"] == poison["id"]  # kept whole: JSON text holds what a column cannot
        assert data["reason"] == ("id outside signed 64-bit" if poison["kind"] == "bigid" else "id is not an integer")


def quarantined(worker: WorkerRun) -> int:
    beat = worker.last_beat()
    return beat.quarantined if beat else 0


@pytest.mark.parametrize("kind", KINDS)
def test_poison_in_the_snapshot_is_quarantined_and_the_shard_goes_live(
    sim_factory: SimFactory, tmp_path: Path, kind: str
) -> None:
    """A poison order in the snapshot: live on the first sync, sink == truth, one rejected row, no resync; a
    resync meets it again (still live), and once cured it is gone from later snapshots."""
    sim = sim_factory(batch=4)
    poison = sim.poison(kind, remainder=0, divisor=1)
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        worker.wait_converged()
        (row,) = rejected_rows(worker)
        check_rejected(row, poison, "Snapshot")
        wait_until(lambda: quarantined(worker) == 1, 5, "the quarantine counted in a heartbeat")
        sim.step(20)
        worker.wait_converged()
        assert len(sim.stats()["syncrequests"]) == 1 and worker.last_beat().reconnects == 0  # type: ignore[union-attr]

        sim.drop()  # a resync meets the poison again: still quarantined, still live
        worker.wait_live(after_reconnects=1)
        worker.wait_converged()
        wait_until(lambda: len(rejected_rows(worker)) == 2, 5, "the second rejected row")
        sim.cure()
        sim.drop()
        worker.wait_live(after_reconnects=2)
        worker.wait_converged()
        assert len(rejected_rows(worker)) == 2 and len(sim.stats()["syncrequests"]) == 3
        assert worker.error is None


@pytest.mark.parametrize("kind", KINDS)
def test_live_poison_is_quarantined_and_its_frame_neighbours_applied(
    sim_factory: SimFactory, tmp_path: Path, kind: str
) -> None:
    """A poison order sent live in one frame with ordinary changes: the changes apply, the poison is a rejected
    row, the session goes on (no reconnect, one syncrequest) and the heartbeat counts one quarantined entity."""
    sim = sim_factory(batch=8)
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        # One call on the simulator's loop: the poison and the step's changes leave in the same frames.
        poison = sim.call(lambda s: (s.poison(kind, None, 1, False, "modAccountId"), s.step(3))[0])
        wait_until(lambda: rejected_rows(worker), 10, "the rejected row")
        worker.wait_converged()
        (row,) = rejected_rows(worker)
        check_rejected(row, poison, "Created")
        wait_until(lambda: quarantined(worker) == 1, 5, "the quarantine counted in a heartbeat")
        sim.step(20)
        worker.wait_converged()
        assert len(sim.stats()["syncrequests"]) == 1 and sim.stats()["ws_connections_total"] == 1
        assert worker.last_beat().reconnects == 0  # type: ignore[union-attr]
        assert worker.error is None


def test_a_flood_of_unknown_events_is_kept_and_logged_a_handful_of_times(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """10,000 unknown server events: every one reaches the change log (origin system), at most a few log lines."""
    sim = sim_factory(batch=50)
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        with structlog.testing.capture_logs() as logs:
            sim.call(lambda s: [s.system_event("mysteryEvent", {"n": n, "accountId": 3}) for n in range(10_000)])

            def systems() -> int:
                conn = sqlite3.connect(f"file:{worker.db_path()}?mode=ro", uri=True, timeout=5)
                try:
                    return int(conn.execute("SELECT count(*) FROM events WHERE origin = 'system' "
                                            "AND entity_type = 'mysteryEvent'").fetchone()[0])
                finally:
                    conn.close()

            wait_until(lambda: systems() == 10_000, 30, "10,000 system rows")
        lines = [entry for entry in logs if entry["event"] in ("system_event", "log_lines_held")]
        assert 1 <= len(lines) <= 3, lines
        assert worker.last_beat().reconnects == 0  # type: ignore[union-attr]
