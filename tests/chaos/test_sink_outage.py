"""The PostgreSQL server crashes mid-stream and starts again: the worker rides it out on the same WebSocket.

While the sink is unreachable the worker keeps its socket and its pid, keeps
applying events to its mirror, buffers the change records (at most
``OUTAGE_BATCHES`` x ``batch_max`` of them) and retries the sink with backoff;
once the server is back it writes the buffer in one transaction, or, when
the buffer overflowed, the difference between what the sink holds and its
mirror (origin ``resync``).  Nothing committed before the crash is lost, the
change log's seq has no gap and the shard equals the simulator's truth.  The
server runs privately here (``pgproc``): the session's shared one is never
crashed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Daemon, wait_until

from shardsync.simulator import Simulator
from shardsync.worker.outage import OUTAGE_BATCHES

from . import sinkread
from .oracle import epoch
from .pgproc import PgProcess

SUPERVISOR = {"heartbeat_interval": 0.25, "heartbeat_timeout": 5.0, "backoff_initial": 0.2, "backoff_max": 1.0,
              "connect_spacing": 0.0}
#: Retries are spaced by their backoff; the loop may wake this much early (its timer resolution).
TIMER_SLACK = 0.05


@pytest.fixture(scope="module")
def crashable_pg() -> Iterator[PgProcess]:
    pg = PgProcess()
    pg.start()
    try:
        yield pg
    finally:
        pg.remove()


def database(pg: PgProcess, name: str) -> str:
    import psycopg

    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg.dsn(name)


def sockets(sim: Simulator) -> list[tuple[int, float | None]]:
    """Every subscription of shard 0 the simulator ever had: (conn, closed_at)."""
    return [(int(r["conn"]), r["closed_at"]) for r in sim.subscriptions() if r.get("remainder") == 0]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def start(sim: Simulator, home: Path, dsn: str, batch_max: int) -> Daemon:
    sink: dict[str, Any] = {"kind": "postgres", "dsn": dsn, "batch_max": batch_max}
    home.mkdir()
    daemon = Daemon(home, sim, divisor=1, sections={"sink": sink, "supervisor": SUPERVISOR}).start()
    daemon.wait_live()
    wait_until(lambda: sinkread.pg_state(dsn, 0, 1) == daemon.truth(0), 20, "the shard converged")
    return daemon


def sink_down_metric(daemon: Daemon) -> float:
    """shard 0's ``shardsync_shard_sink_down_seconds`` on /metrics."""
    code, body = daemon.http("/metrics")
    assert code == 200, body
    prefix = 'shardsync_shard_sink_down_seconds{shard="0"} '
    return float(next(line[len(prefix):] for line in body.decode().splitlines() if line.startswith(prefix)))


def events_seen(daemon: Daemon) -> int:
    return int(daemon.shards()[0]["events"])


def retries_obey_backoff(daemon: Daemon) -> None:
    failed = daemon.events("sink_retry_failed")
    assert [int(line["attempt"]) for line in failed] == list(range(1, len(failed) + 1))
    assert all(0 < float(line["retry_in"]) <= SUPERVISOR["backoff_max"] for line in failed)
    times = [epoch(line["timestamp"]) for line in [daemon.events("sink_unavailable")[0], *failed]]
    delays = [float(daemon.events("sink_unavailable")[0]["retry_in"]), *(float(x["retry_in"]) for x in failed)]
    for (at, delay), next_at in zip(zip(times, delays, strict=False), times[1:], strict=False):
        assert next_at - at >= delay - TIMER_SLACK, f"a sink retry {next_at - at:.3f}s after one that said {delay}"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_postgres_crash_buffers_on_the_same_socket_and_loses_nothing(
        sim_factory: Callable[..., Simulator], crashable_pg: PgProcess, tmp_path: Path) -> None:
    """A crash of the PostgreSQL server mid-stream: same worker, same subscription, retries with backoff, the
    outage shown in /status and /metrics, the buffered changes written as they were received once it is back (no
    resync), nothing committed lost."""
    sim = sim_factory(accounts=12, users=4)
    dsn = database(crashable_pg, "outage_buffered")
    daemon = start(sim, tmp_path / "daemon", dsn, batch_max=5000)
    try:
        sim.step(300)
        wait_until(lambda: sinkread.pg_state(dsn, 0, 1) == daemon.truth(0), 20, "the burst committed")
        before, pid, socket = sinkread.pg_log(dsn, 0, 1), daemon.pids()[0], sockets(sim)
        crashable_pg.crash()
        sim.step(400)  # while the sink is down
        wait_until(lambda: len(daemon.events("sink_retry_failed")) >= 2, 20, "two failed sink retries")
        down = wait_until(lambda: (s := daemon.shards()[0])["sink_down_for"] and s, 10, "/status to show the outage")
        assert down["state"] == "live" and down["pid"] == pid
        assert sink_down_metric(daemon) > 0
        sim.step(400)
        seen = events_seen(daemon)
        crashable_pg.start()
        wait_until(lambda: daemon.events("sink_recovered"), 20, "the sink recovered")
        wait_until(lambda: sinkread.pg_state(dsn, 0, 1) == daemon.truth(0), 20, "the shard converged")
        wait_until(lambda: daemon.shards()[0]["sink_down_for"] is None and sink_down_metric(daemon) == 0, 10,
                   "/status and /metrics to show the sink reachable")
        after = sinkread.pg_log(dsn, 0, 1)
        assert seen > 0
        assert daemon.pids()[0] == pid, "the worker was replaced"
        assert sockets(sim) == socket and socket[0][1] is None, f"the socket was not kept: {sockets(sim)}"
        lost = [seq for seq, row in before.items() if after.get(seq) != row]
        assert not lost, f"{len(lost)} committed changes lost or altered, e.g. seq {lost[:5]}"
        assert sorted(after) == list(range(1, len(after) + 1)), "the change log's seq has a gap"
        written = [row for seq, row in after.items() if seq > max(before)]
        assert len(written) >= 800 and {row[0] for row in written} == {"live"}, {row[0] for row in written}
        recovered = daemon.events("sink_recovered")[-1]
        assert recovered["overflowed"] is False and int(recovered["changes"]) >= 800
        retries_obey_backoff(daemon)
    finally:
        daemon.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_postgres_crash_overflowing_the_buffer_resyncs_from_the_mirror_in_bounded_memory(
        sim_factory: Callable[..., Simulator], crashable_pg: PgProcess, tmp_path: Path) -> None:
    """An outage longer than the buffer: its change records are dropped, the worker's memory stays bounded, and
    once the server is back the sink is brought to the mirror's state (origin resync) on the same socket."""
    sim = sim_factory(accounts=12, users=4)
    dsn = database(crashable_pg, "outage_overflowed")
    batch_max = 10
    daemon = start(sim, tmp_path / "daemon", dsn, batch_max=batch_max)
    try:
        before, pid, socket = sinkread.pg_log(dsn, 0, 1), daemon.pids()[0], sockets(sim)
        assert pid is not None
        rss_before = rss_kib(pid)
        crashable_pg.crash()
        # Far more than the buffer's OUTAGE_BATCHES * batch_max change records (each burst's are dropped).
        burst, bursts = 10_000, 6
        assert burst * bursts > 100 * OUTAGE_BATCHES * batch_max
        for n in range(bursts):
            start_count = events_seen(daemon)
            sim.step(burst)
            wait_until(lambda c=start_count: events_seen(daemon) >= c + burst, 60, f"burst {n} received")
        rss_during = rss_kib(pid)
        growth = rss_during - rss_before
        print(f"worker RSS {rss_before} KiB -> {rss_during} KiB across {burst * bursts} events with the sink down")
        # 60,000 buffered change records would take tens of MiB; the mirror's overlay is bounded by the shard.
        assert growth < 16 * 1024, f"worker RSS grew {growth} KiB during the outage"
        crashable_pg.start()
        wait_until(lambda: daemon.events("sink_recovered"), 20, "the sink recovered")
        wait_until(lambda: sinkread.pg_state(dsn, 0, 1) == daemon.truth(0), 20, "the shard converged")
        after = sinkread.pg_log(dsn, 0, 1)
        assert daemon.pids()[0] == pid, "the worker was replaced"
        assert sockets(sim) == socket and socket[0][1] is None, f"the socket was not kept: {sockets(sim)}"
        lost = [seq for seq, row in before.items() if after.get(seq) != row]
        assert not lost, f"{len(lost)} committed changes lost or altered, e.g. seq {lost[:5]}"
        assert sorted(after) == list(range(1, len(after) + 1)), "the change log's seq has a gap"
        recovered = daemon.events("sink_recovered")[-1]
        assert recovered["overflowed"] is True
        assert daemon.events("sink_buffer_overflowed")
        written = {row[0] for seq, row in after.items() if seq > max(before)}
        assert "resync" in written, written
    finally:
        daemon.stop()
