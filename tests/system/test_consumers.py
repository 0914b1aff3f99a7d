"""Consumers of the real daemon under load and faults: a PostgreSQL LISTEN + per-shard cursor consumer and
`shardsync follow` (PostgreSQL and sqlite, restarted from its cursor file mid-stream) each see every committed
change exactly once and in per-shard order, checked against the change log after quiesce."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from harness import Daemon, wait_until

from shardsync.simulator import Simulator

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy" / "examples"))
from pg_consumer import follow_changes

DIVISOR = 4
RATE = 1500.0
Log = dict[int, list[tuple[int, str, str, str, int | None]]]


def pg_rows(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def pg_log(dsn: str) -> Log:
    """The change log per shard in shard_seq order: (shard_seq, origin, entity_type, event_type, id)."""
    log: Log = {}
    for shard, seq, origin, entity_type, event_type, ident in pg_rows(
        dsn, "SELECT shard, shard_seq, origin, entity_type, event_type, id FROM events WHERE divisor = %s "
             "ORDER BY shard, shard_seq", (DIVISOR,)
    ):
        log.setdefault(shard, []).append((seq, origin, entity_type, event_type, ident))
    return log


def pg_entities(dsn: str, shard: int) -> dict[tuple[str, int], Any]:
    rows = pg_rows(dsn, "SELECT entity_type, id, data::text FROM entities WHERE divisor = %s AND shard = %s",
                   (DIVISOR, shard))
    return {(t, i): orjson.loads(d) for t, i, d in rows}


def sqlite_log(daemon: Daemon) -> Log:
    import sqlite3

    log: Log = {}
    for shard in range(DIVISOR):
        db = sqlite3.connect(f"file:{daemon.db_path(shard)}?mode=ro", uri=True, timeout=5)
        try:
            rows = db.execute("SELECT seq, origin, entity_type, event_type, id FROM events ORDER BY seq").fetchall()
        finally:
            db.close()
        log[shard] = [tuple(row) for row in rows]  # type: ignore[misc]
    return log


def faults(daemon: Daemon, sim: Simulator, between: Callable[[], None]) -> None:
    """A worker SIGKILL (shard 0), a socket drop (shard 1), a server close frame forcing a resync (shard 2)."""
    victim = daemon.pids()[0]
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: daemon.pids()[0] not in (None, victim), 20, "shard 0 replaced")
    daemon.wait_live(30)
    between()
    assert sim.drop(remainder=1, divisor=DIVISOR) >= 1
    daemon.wait_live(30)
    between()
    assert sim.close_frame(remainder=2, divisor=DIVISOR) >= 1
    daemon.wait_live(30)


def quiesce(daemon: Daemon, sim: Simulator, entities: Callable[[int], dict[tuple[str, int], Any]]) -> None:
    sim.pause()
    for shard in range(DIVISOR):
        wait_until(lambda s=shard: entities(s) == daemon.truth(s), 60, f"shard {shard} converged")  # type: ignore[misc]


def by_shard(items: list[tuple[int, tuple[Any, ...]]]) -> Log:
    out: Log = {}
    for shard, row in items:
        out.setdefault(shard, []).append(row)  # type: ignore[arg-type]
    return out


@pytest.fixture
def pg_daemon(sim_factory: Callable[..., Simulator], daemon_factory: Callable[..., Daemon],
              pg_dsn: str) -> Iterator[tuple[Daemon, Simulator]]:
    sim = sim_factory(event_rate=RATE, accounts=64, users=16)
    daemon = daemon_factory(sim, divisor=DIVISOR, sections={"sink": {"kind": "postgres", "dsn": pg_dsn}})
    daemon.wait_live(60)
    yield daemon, sim


def test_pg_consumer_sees_every_change_once_in_order_through_faults(pg_daemon: tuple[Daemon, Simulator],
                                                                    pg_dsn: str) -> None:
    """deploy/examples/pg_consumer.py (LISTEN + per-shard cursor) at ~1,500 events/s over 4 shards with a
    SIGKILL, a socket drop and a resync gets exactly the committed log of every shard, in shard_seq order."""
    daemon, sim = pg_daemon
    seen: list[tuple[int, tuple[Any, ...]]] = []
    positions: dict[tuple[int, int], int] = {}
    done = threading.Event()
    errors: list[BaseException] = []

    def handle(divisor: int, shard: int, row: tuple[Any, ...]) -> None:
        assert divisor == DIVISOR
        seen.append((shard, (row[0], row[1], row[2], row[3], row[4])))

    def consume() -> None:
        try:
            follow_changes(pg_dsn, positions, handle, stop=done.is_set, idle=0.5)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    consumer = threading.Thread(target=consume, name="pg-consumer", daemon=True)
    consumer.start()
    try:
        start = len(seen)
        wait_until(lambda: len(seen) > start + 500, 30, "consumer receiving")
        faults(daemon, sim, lambda: wait_until(lambda: len(seen) > start + 500, 30, "traffic between faults"))
        quiesce(daemon, sim, lambda s: pg_entities(pg_dsn, s))
        heads = {(d, s): last for d, s, last in pg_rows(pg_dsn, "SELECT divisor, shard, last_seq FROM shard_seqs")}
        wait_until(lambda: all(positions.get(k, 0) == v for k, v in heads.items()), 30, "consumer caught up")
    finally:
        done.set()
        consumer.join(10)
    assert not errors, errors
    log = pg_log(pg_dsn)
    assert sum(len(rows) for rows in log.values()) > 5000  # the load was real
    assert by_shard(seen) == log
    for rows in log.values():
        assert [row[0] for row in rows] == list(range(1, len(rows) + 1))  # gap-free per shard


class Follow:
    """`shardsync follow` writing to a file; restarted with the same cursor file."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.tmp, self.args = tmp, args
        self.cursor = tmp / "follow-cursor.json"
        self.runs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self) -> None:
        out = self.tmp / f"follow-{len(self.runs)}.jsonl"
        with open(out, "wb") as stream, open(self.tmp / f"follow-{len(self.runs)}.err", "wb") as err:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SHARDSYNC_", "PG"))}
            proc = subprocess.Popen([sys.executable, "-m", "shardsync", "follow", *self.args, "--cursor",
                                     str(self.cursor), "--from-start"], stdout=stream, stderr=err, env=env)
        self.runs.append((proc, out))

    def stop(self) -> None:
        proc, _ = self.runs[-1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0

    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for _, out in self.runs for line in out.read_bytes().splitlines()]

    def count(self) -> int:
        return sum(out.read_bytes().count(b"\n") for _, out in self.runs)

    def kill(self) -> None:
        for proc, _ in self.runs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def follow_through_faults(daemon: Daemon, sim: Simulator, follow: Follow,
                          entities: Callable[[int], dict[tuple[str, int], Any]], log: Callable[[], Log]) -> None:
    follow.start()
    try:
        wait_until(lambda: follow.count() > 500, 30, "follow streaming")
        # Restarted mid-stream: the simulator keeps generating while follow is down.
        follow.stop()
        stopped_at = follow.count()
        follow.start()
        wait_until(lambda: follow.count() > stopped_at + 300, 30, "follow streaming again")
        faults(daemon, sim, lambda: None)
        quiesce(daemon, sim, entities)
        expected = log()
        total = sum(len(rows) for rows in expected.values())
        wait_until(lambda: follow.count() >= total, 60, "follow caught up with the log")
        follow.stop()
        lines = follow.lines()
    finally:
        follow.kill()
    assert total > 3000
    assert all(line["divisor"] == DIVISOR for line in lines)
    got = by_shard([(line["shard"], (line["seq"], line["origin"], line["entityType"], line["eventType"],
                                     line["id"])) for line in lines])
    assert got == expected


def test_follow_on_postgres_restarted_from_its_cursor(pg_daemon: tuple[Daemon, Simulator], pg_dsn: str,
                                                      tmp_path: Path) -> None:
    """`shardsync follow --dsn` through faults and a SIGTERM + restart from its cursor file mid-stream delivers the
    PostgreSQL change log exactly once per shard, in order."""
    daemon, sim = pg_daemon
    follow_through_faults(daemon, sim, Follow(tmp_path, "--dsn", pg_dsn), lambda s: pg_entities(pg_dsn, s),
                          lambda: pg_log(pg_dsn))


def test_follow_on_sqlite_restarted_from_its_cursor(sim_factory: Callable[..., Simulator],
                                                    daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    """`shardsync follow --path` on the sqlite state directory, same faults and restart: every shard file's
    events, exactly once, in seq order."""
    sim = sim_factory(event_rate=RATE, accounts=64, users=16)
    daemon = daemon_factory(sim, divisor=DIVISOR)
    daemon.wait_live(60)
    follow_through_faults(daemon, sim, Follow(tmp_path, "--path", str(daemon.state), "--interval", "0.1"),
                          daemon.sink_entities, lambda: sqlite_log(daemon))
