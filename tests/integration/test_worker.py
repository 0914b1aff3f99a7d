"""The real shard worker against the simulator over loopback: conformance, faults, convergence."""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from worker_harness import WorkerRun, get_token

from polling import wait_until
from shardfile import read_events, read_sqlite
from shardsync import ipc
from shardsync.simulator import Simulator

SimFactory = Callable[..., Simulator]


def settle(sim: Simulator, worker: WorkerRun, timeout: float = 15.0) -> None:
    """Stop the generator, then wait until the worker's sink equals the shard's truth."""
    sim.pause()
    worker.wait_converged(timeout)


def test_conformance_authorize_sync_and_heartbeats_under_load(sim_factory: SimFactory, tmp_path: Path) -> None:
    """Authorize goes first with the raw token, one correct syncrequest follows, `[]` gaps stay <= 2.6 s under load."""
    sim = sim_factory(event_rate=2000, accounts=40, users=8, batch=4)
    with WorkerRun(sim, tmp_path, remainder=1, divisor=3) as worker:
        worker.wait_live()
        conn = wait_until(lambda: next(iter(sim.stats()["heartbeats"]), None), 5, "a heartbeat")
        wait_until(lambda: len(sim.stats()["heartbeats"][conn]) >= 4, 15, "four client heartbeats")
        stats = sim.stats()
        assert stats["authorize_attempts"] == 1
        assert stats["ws_connections_total"] == 1
        assert len(stats["syncrequests"]) == 1
        assert stats["syncrequests"][0]["body"] == {
            "splitResponses": True,
            "entityTypes": list(worker.options.entity_types),
            "shardingExpression": {"expressionType": "modAccountId", "divisor": 3, "remainder": 1},
        }
        beats = stats["heartbeats"][conn]
        gaps = [b - a for a, b in itertools.pairwise(beats)]
        assert max(gaps) <= 2.6, gaps
        assert worker.last_beat() is not None and worker.last_beat().events > 0  # type: ignore[union-attr]
        settle(sim, worker)


def test_heartbeats_report_states_and_counters(sim_factory: SimFactory, tmp_path: Path) -> None:
    """Heartbeats walk through authorizing/syncing to live and carry frame, event and entity counters."""
    sim = sim_factory(event_rate=50)
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        wait_until(lambda: worker.last_beat().events > 0, 10, "live events counted")  # type: ignore[union-attr]
        beat = worker.last_beat()
        assert beat is not None
        assert beat.frames > 0 and beat.entities > 0 and beat.connected_since is not None
        assert beat.last_frame_age is not None and beat.last_frame_age < 5
        states = [b.state for b in worker.beats()]
        assert states.index("connecting") < states.index("live")
        assert any(isinstance(m, ipc.Hello) for m in worker.messages)


@pytest.mark.parametrize(
    ("knob", "kwargs"),
    [
        ("drop", {}),
        ("close_frame", {"code": 3000, "reason": "Go away!"}),
        ("shutdown", {"reason_code": "Maintenance"}),
    ],
)
def test_converges_after_connection_faults(
    sim_factory: SimFactory, tmp_path: Path, knob: str, kwargs: dict[str, Any]
) -> None:
    """After a dropped socket, a c-frame close or a Maintenance shutdown the worker resyncs to the truth."""
    sim = sim_factory(event_rate=100)
    with WorkerRun(sim, tmp_path, remainder=0, divisor=2) as worker:
        worker.wait_live()
        assert getattr(sim, knob)(remainder=0, **kwargs) == 1
        worker.wait_live(after_reconnects=1)
        assert sim.stats()["ws_connections_total"] == 2
        settle(sim, worker)


def test_quota_shutdown_backs_off_long(sim_factory: SimFactory, tmp_path: Path) -> None:
    """A ConnectionQuotaReached shutdown waits quota_backoff before reconnecting, then converges."""
    sim = sim_factory(event_rate=20)
    with WorkerRun(sim, tmp_path, quota_backoff=2.0) as worker:
        worker.wait_live()
        sim.shutdown(reason_code="ConnectionQuotaReached")
        cut = time.monotonic()
        wait_until(lambda: sim.stats()["ws_connections_total"] == 2, 10, "reconnect")
        assert time.monotonic() - cut >= 1.0  # jitter-free lower bound is quota_backoff itself: 2.0 s
        beat = worker.wait_live(after_reconnects=1)
        assert beat.last_error is not None and "ConnectionQuotaReached" in beat.last_error
        settle(sim, worker)


def test_sync_429_backs_off_long(sim_factory: SimFactory, tmp_path: Path) -> None:
    """A 429 answer to the syncrequest is a long back-off, not a hammering loop."""
    sim = sim_factory()
    sim.ws429(1)
    with WorkerRun(sim, tmp_path, quota_backoff=1.5) as worker:
        wait_until(lambda: any(b.state == "backoff" for b in worker.beats()), 10, "backoff")
        cut = time.monotonic()
        worker.wait_live(after_reconnects=1)
        assert time.monotonic() - cut >= 1.2
        assert len(sim.stats()["syncrequests"]) == 2
        worker.wait_converged()


def test_stalled_socket_is_closed_after_idle_timeout(sim_factory: SimFactory, tmp_path: Path) -> None:
    """A socket that goes silent (no frame at all) is given up after idle_timeout and the shard resyncs."""
    sim = sim_factory(event_rate=20)
    # Once paused, the simulator is silent for 2.5 s (its "h"), so each session lasts 1.5 s: the
    # provisional deletions of its (quiet-rule) snapshot must commit within that.
    with WorkerRun(sim, tmp_path, idle_timeout=1.5, deletion_grace=0.2) as worker:
        worker.wait_live()
        sim.stall(remainder=0)
        beat = worker.wait_live(after_reconnects=1, timeout=15)
        assert beat.last_error is not None and "no frame" in beat.last_error
        settle(sim, worker)


def test_mutations_while_disconnected_including_deletions(sim_factory: SimFactory, tmp_path: Path) -> None:
    """Changes made while the worker was away, deletions included, are healed by the resync at its next start."""
    sim = sim_factory()
    with WorkerRun(sim, tmp_path, remainder=1, divisor=2) as worker:
        worker.wait_live()
        worker.wait_converged()
    changes = sim.mutate(count=12, remainder=1, divisor=2, deletions=3)
    assert any(c.event_type == "Deleted" for c in changes)
    with WorkerRun(sim, tmp_path, remainder=1, divisor=2) as worker:
        worker.wait_live()
        worker.wait_converged()
        events = read_events(worker.db_path())
        resync = [e for e in events if e[0] == "resync"]
        assert any(e[2] == "Deleted" for e in resync)
        assert all(e[0] in ("snapshot", "resync") for e in events)


def test_mutations_while_dropped_are_healed(sim_factory: SimFactory, tmp_path: Path) -> None:
    """Server-side changes missed while the socket is down (stalled, then dropped) appear after the resync."""
    sim = sim_factory()
    with WorkerRun(sim, tmp_path, idle_timeout=3.0) as worker:
        worker.wait_live()
        sim.stall(remainder=0)
        sim.mutate(count=10, remainder=0, divisor=1, deletions=2)
        sim.unstall(remainder=0)
        sim.drop(remainder=0)
        worker.wait_live(after_reconnects=1)
        worker.wait_converged()


def test_restart_emits_only_real_differences(sim_factory: SimFactory, tmp_path: Path) -> None:
    """A worker restarted on an existing sqlite file loads its mirror and writes nothing when nothing changed."""
    sim = sim_factory()
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        worker.wait_converged()
        before = len(read_events(worker.db_path()))
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        assert len(read_events(worker.db_path())) == before


@pytest.mark.parametrize("split_end", ["none", "empty", "flag"])
def test_split_snapshots_with_interleaved_props(sim_factory: SimFactory, tmp_path: Path, split_end: str) -> None:
    """Split snapshots (every end variant, props between chunks, one or many frames) converge to the truth."""
    sim = sim_factory(snapshot_mode="split", split_chunks=4, split_end=split_end, interleave_props=3,
                      snapshot_frames="one" if split_end == "flag" else "many")
    with WorkerRun(sim, tmp_path, remainder=0, divisor=2) as worker:
        worker.wait_live()
        worker.wait_converged()
        origins = {e[0] for e in read_events(worker.db_path())}
        assert "snapshot" in origins and "resync" not in origins
        assert worker.last_beat().reconnects == 0  # type: ignore[union-attr]


def test_entity_lists_and_id_only_deletions(sim_factory: SimFactory, tmp_path: Path) -> None:
    """Props whose entity is a list, and Deleted events carrying only the id, keep the sink equal to the truth."""
    sim = sim_factory(event_rate=200, entity_list="always", deleted_entity="id", batch=5)
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        wait_until(lambda: worker.last_beat().events > 50, 15, "live events")  # type: ignore[union-attr]
        settle(sim, worker)
        assert any(e[0] == "live" and e[2] == "Deleted" for e in read_events(worker.db_path()))


@pytest.mark.parametrize("kind", ["truncated", "not_array", "bad_utf8", "unknown_letter"])
def test_malformed_frames_resync_and_lose_nothing(sim_factory: SimFactory, tmp_path: Path, kind: str) -> None:
    """A malformed frame is logged with an excerpt, the session resyncs and the sink still equals the truth."""
    sim = sim_factory(event_rate=50)
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        assert sim.malformed(kind, remainder=0) == 1
        beat = worker.wait_live(after_reconnects=1)
        assert beat.last_error is not None and "protocol error" in beat.last_error
        settle(sim, worker)


def test_huge_frames_are_accepted(sim_factory: SimFactory, tmp_path: Path) -> None:
    """A 60 MiB frame (under the 64 MiB max_message_bytes default) arrives whole, without a reconnect, applied."""
    sim = sim_factory()
    with WorkerRun(sim, tmp_path, idle_timeout=60.0) as worker:
        worker.wait_live()
        frames = worker.last_beat().frames  # type: ignore[union-attr]
        sim.malformed("huge", remainder=0, size_mib=60)
        wait_until(lambda: worker.last_beat().frames > frames, 60, "the huge frame")  # type: ignore[union-attr]
        beat = worker.last_beat()
        assert beat is not None and beat.reconnects == 0 and beat.state == "live"
        worker.wait_converged()


def test_large_snapshot(sim_factory: SimFactory, tmp_path: Path) -> None:
    """A snapshot of 50,000 entities in one response is reconciled and stored."""
    sim = sim_factory()
    sim.inflate(50_000, text_bytes=100, remainder=0, divisor=1)
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live(timeout=60)
        worker.wait_converged(30)
        assert len(worker.sink_entities()) > 50_000


def test_system_events_are_kept(sim_factory: SimFactory, tmp_path: Path) -> None:
    """Signature/system events reach the change log with origin "system" and their payload."""
    sim = sim_factory()
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        sim.system_event("OtherEnvAdminAlertSignal", {"id": 9, "text": "liquidate"}, remainder=0)
        sim.system_event("SomethingNew", {"x": 1}, remainder=0)

        def system_rows() -> list[tuple[str, str, str, int | None]]:
            return [e for e in read_events(worker.db_path()) if e[0] == "system"]

        rows = wait_until(lambda: len(system_rows()) == 2 and system_rows(), 10, "two system rows")
        assert [r[1] for r in rows] == ["OtherEnvAdminAlertSignal", "SomethingNew"]


def test_token_rejected_is_reported_and_a_new_token_resumes(sim_factory: SimFactory, tmp_path: Path) -> None:
    """A 401 on authorize sends NeedToken upward (never a login), and a fresh token resumes the shard."""
    sim = sim_factory()
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        logins = sim.stats()["logins"]
        sim.revoke()
        sim.drop(remainder=0)
        wait_until(lambda: any(isinstance(m, ipc.NeedToken) for m in worker.messages), 10, "NeedToken")
        assert sim.stats()["logins"] == logins
        wait_until(lambda: worker.state() == "waiting_token", 5, "waiting for a token")
        worker.give(ipc.Token(get_token(sim), time.time() + 3600))
        worker.wait_live(after_reconnects=1)
        worker.wait_converged()


def test_sink_error_resyncs_instead_of_dropping(sim_factory: SimFactory, tmp_path: Path) -> None:
    """While another process holds the sqlite write lock, writes fail; the worker resyncs and converges after."""
    sim = sim_factory(event_rate=50)
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        blocker = sqlite3.connect(worker.db_path(), timeout=0, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            beat = wait_until(
                lambda: (b := worker.last_beat()) and b.last_error and "sink error" in b.last_error and b,
                30, "a sink error",
            )
            assert beat.reconnects >= 1
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        settle(sim, worker, 30)


def test_permits_are_asked_before_every_connect(sim_factory: SimFactory, tmp_path: Path) -> None:
    """With permits on, the worker asks before each connect and does not connect until granted."""
    sim = sim_factory()
    with WorkerRun(sim, tmp_path, permits=True) as worker:
        wait_until(lambda: any(isinstance(m, ipc.NeedPermit) for m in worker.messages), 5, "NeedPermit")
        assert sim.stats()["ws_connections_total"] == 0
        worker.give(ipc.Permit())
        worker.wait_live()
        sim.drop(remainder=0)
        wait_until(lambda: sum(isinstance(m, ipc.NeedPermit) for m in worker.messages) == 2, 5, "second ask")
        assert sim.stats()["ws_connections_total"] == 1
        worker.give(ipc.Permit())
        worker.wait_live(after_reconnects=1)


def test_stop_closes_with_a_close_frame_and_flushes(sim_factory: SimFactory, tmp_path: Path) -> None:
    """Stop closes the socket with a normal close frame and leaves the sink equal to the truth."""
    sim = sim_factory()
    worker = WorkerRun(sim, tmp_path).start()
    worker.wait_live()
    worker.wait_converged()
    worker.stop()
    assert worker.exit_code == 0
    closes = wait_until(lambda: sim.stats()["closes"], 5, "close recorded")
    assert closes[-1]["by"] == "client" and closes[-1]["code"] == 1000
    assert read_sqlite(worker.db_path()) == worker.truth()


def test_jsonl_sink_converges(sim_factory: SimFactory, tmp_path: Path) -> None:
    """The jsonl sink receives the snapshot and live changes; replaying it gives the truth."""
    sim = sim_factory(event_rate=100)
    with WorkerRun(sim, tmp_path, sink_kind="jsonl") as worker:
        worker.wait_live()
        wait_until(lambda: worker.last_beat().events > 20, 10, "live events")  # type: ignore[union-attr]
        sim.pause()
        truth = worker.truth()

        def replayed() -> dict[tuple[str, int], Any]:
            return {(t, i): e for t, i, e in _load_jsonl(tmp_path)}

        wait_until(lambda: replayed() == truth, 10, "jsonl replay == truth")


def _load_jsonl(path: Path) -> list[tuple[str, int, Any]]:
    state: dict[tuple[str, int], Any] = {}
    file = path / "shard-000-of-001.jsonl"
    if not file.exists():
        return []
    for line in file.read_bytes().splitlines():
        if not line:
            continue
        row = orjson.loads(line)
        if row["origin"] == "system":
            continue
        key = (row["entityType"], row["entity"]["id"])
        if row["eventType"] == "Deleted":
            state.pop(key, None)
        else:
            state[key] = row["entity"]
    return [(t, i, e) for (t, i), e in state.items()]


def test_replayed_events_are_deduplicated_and_converge(sim_factory: SimFactory, tmp_path: Path) -> None:
    """A re-delivered latest event writes nothing, and a replayed window of events still ends converged.

    Without sequence numbers an older event replayed over a newer state
    applies again (the window replays in order, so it ends at the newest
    state); only re-delivery of what the mirror already holds is a no-op.
    """
    sim = sim_factory(event_rate=200)
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live()
        wait_until(lambda: worker.last_beat().events > 30, 10, "live events")  # type: ignore[union-attr]
        sim.pause()
        worker.wait_converged()
        frames = wait_until(lambda: (b := worker.last_beat()) and b.frames, 5, "frames")
        logged = len(read_events(worker.db_path()))
        assert sim.replay(count=1, remainder=0) == 1
        wait_until(lambda: worker.last_beat().frames > frames, 10, "the replayed frame")  # type: ignore[union-attr]
        worker.wait_converged()
        assert len(read_events(worker.db_path())) == logged
        assert sim.replay(count=30, remainder=0) == 30
        wait_until(lambda: worker.last_beat().frames > frames + 30, 10, "replayed frames")  # type: ignore[union-attr]
        worker.wait_converged()


def test_late_snapshot_part_resyncs_with_a_longer_quiet_period(sim_factory: SimFactory, tmp_path: Path) -> None:
    """A split part arriving after the quiet rule fired makes the worker resync with a doubled quiet period."""
    sim = sim_factory(snapshot_mode="split", split_chunks=3, split_end="none", split_delay=0.5, event_rate=20)
    with WorkerRun(sim, tmp_path, snapshot_quiet=0.3) as worker:
        beat = worker.wait_live(after_reconnects=1, timeout=20)
        assert beat.last_error is not None and "late snapshot part" in beat.last_error
        worker.wait_converged()
        assert len(sim.stats()["syncrequests"]) == 2


@pytest.mark.parametrize(
    ("split", "sim_options"),
    [
        (False, {}),
        (True, {"snapshot_mode": "split", "split_end": "empty"}),
        (True, {"snapshot_mode": "split", "split_end": "flag", "snapshot_frames": "one"}),
    ],
    ids=["unsplit", "split-end-marker-frames", "split-end-flag-one-frame"],
)
def test_props_right_after_the_snapshot_apply_after_reconciliation(
    sim_factory: SimFactory, tmp_path: Path, split: bool, sim_options: dict[str, Any]
) -> None:
    """Props read in the same pass as the completing snapshot part are applied after it, so none is undone."""
    sim = sim_factory(trailing_props=30, **sim_options)
    with WorkerRun(sim, tmp_path, split_responses=split, snapshot_quiet=30.0) as worker:
        worker.wait_live(timeout=10)
        worker.wait_converged()
        origins = [e[0] for e in read_events(worker.db_path())]
        assert origins.count("live") >= 30
        assert "resync" not in origins


def test_buffered_props_keep_the_time_they_were_read(sim_factory: SimFactory, tmp_path: Path) -> None:
    """Props buffered during a slow split snapshot are stamped when they were read, not when the snapshot completed."""
    # Each message in its own frame 0.3 s apart: part, 2 props, part, 2 props, end marker (1.8 s in all).
    sim = sim_factory(snapshot_mode="split", split_chunks=2, split_end="empty", interleave_props=2, split_delay=0.3)
    with WorkerRun(sim, tmp_path, snapshot_quiet=30.0) as worker:
        worker.wait_live(timeout=20)
        worker.wait_converged()
        conn = sqlite3.connect(f"file:{worker.db_path()}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute("SELECT origin, received_at FROM events ORDER BY seq").fetchall()
        finally:
            conn.close()
    stamp = {origin: [datetime.fromisoformat(at) for o, at in rows if o == origin] for origin in ("snapshot", "live")}
    # The generator is quiet (event_rate 0): every live row is one of the interleaved, buffered props.
    assert len(stamp["live"]) >= 3, rows
    # The first was read 1.5 s before the end marker; stamped at completion it would be within milliseconds of it.
    assert (min(stamp["snapshot"]) - min(stamp["live"])).total_seconds() >= 0.6, rows
