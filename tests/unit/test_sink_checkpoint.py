"""The sqlite sink's checkpoints: never inside a commit, from the sink's own thread, with the WAL bounded."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from polling import wait_until
from shardsync.change import Change
from shardsync.sinks import open_sink
from shardsync.sinks.sqlite import FALLBACK_CHECKPOINT_PAGES, SqliteSink, retire
from shardsync.sinks.sqlite_checkpoint import Checkpointer, Outcome
from shardsync.sinks.sqlite_gate import Gate
from shardsync.sinks.sqlite_wal import restarts

PADDING = "x" * 1500
MIB = 1 << 20


def batch(number: int, size: int = 400) -> list[Change]:
    """``size`` changes of ~1.6 KB each (about 1.3 MiB of WAL with the log row and indexes)."""
    start = number * size
    return [Change("live", "order", "Updated", n, {"id": n, "accountId": 1, "note": PADDING}, "t", 1)
            for n in range(start, start + size)]


def checkpointer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "shardsync-checkpoint"]


def main_file(sink: SqliteSink) -> tuple[int, str]:
    data = Path(sink.file).read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()


def test_commits_never_checkpoint_inline(tmp_path: Path) -> None:
    """With no checkpointer, 40 MiB of commits (past SQLite's and the old 16 MiB thresholds) leave the
    database file byte for byte as it was: no commit copied the WAL into it."""
    with SqliteSink(str(tmp_path), remainder=0, divisor=1, checkpoints=None) as sink:
        assert sink._connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        before = main_file(sink)
        for number in range(30):
            sink.write(batch(number))
        assert Path(sink.file + "-wal").stat().st_size > 40 * MIB
        assert main_file(sink) == before
        assert checkpointer_threads() == []


def test_wal_stays_bounded_under_sustained_writes(tmp_path: Path) -> None:
    """Under back-to-back commits of 60 MiB of WAL the checkpointer thread keeps the WAL file within a few
    MiB of its 4 MiB bound, every change is kept, and once the writes stop the WAL is cut back under it."""
    bound = 4 * MIB

    def checkpointer(file: str) -> Checkpointer:
        return Checkpointer(file, interval=0.02, idle=0.02, max_wal_bytes=bound)

    with SqliteSink(str(tmp_path), remainder=0, divisor=1, checkpoints=checkpointer) as sink:
        wal = Path(sink.file + "-wal")
        peak = 0
        for number in range(45):
            sink.write(batch(number))
            peak = max(peak, wal.stat().st_size)
        assert sink.checkpointer is not None
        stats = sink.checkpointer.stats
        assert peak < 3 * bound, (peak, stats)
        wait_until(lambda: wal.stat().st_size <= bound, 10, "the WAL back under its bound")
        assert stats.passive > 0 and stats.failed == 0, stats
        count = sink._connection().execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone()
        assert count == (45 * 400, 45 * 400)


def test_a_quiet_stream_is_made_durable_without_restarting_the_wal(tmp_path: Path) -> None:
    """Commits with pauses between them (a quiet shard) never start the WAL over, so no commit fsyncs;
    the thread fsyncs the WAL itself while commits go on, copies nothing, and stops once they stop."""

    def checkpointer(file: str) -> Checkpointer:
        return Checkpointer(file, interval=0.01, idle=0.01, sync_every=0.05)

    with SqliteSink(str(tmp_path), remainder=0, divisor=1, checkpoints=checkpointer) as sink:
        assert sink.checkpointer is not None
        stats = sink.checkpointer.stats
        for number in range(40):
            sink.write(batch(number, size=2))
            time.sleep(0.03)  # past idle: the checkpointer this replaced copied everything here
        wait_until(lambda: stats.synced >= 5, 10, "the WAL fsynced by the thread while commits go on")
        assert restarts(sink.file) == 0, stats
        assert stats.passive == stats.truncate == stats.gated == stats.failed == 0, stats
        # The commits of the last sync period are synced once more (twice if one came in as it began); then,
        # with no commit, the count must stay put: ten sync periods unchanged, the thread does not spin.
        last = [stats.synced, time.monotonic()]

        def unchanged_for(seconds: float) -> bool:
            if stats.synced != last[0]:
                last[:] = [stats.synced, time.monotonic()]
            return time.monotonic() - last[1] >= seconds

        wait_until(lambda: unchanged_for(0.5), 10, "the syncs to stop with the commits")
        count = sink._connection().execute("SELECT count(*) FROM events").fetchone()[0]
        assert count == 80


def test_a_log_past_its_restart_size_is_copied_and_starts_over(tmp_path: Path) -> None:
    """Once the log since the WAL last started over passes ``restart_bytes`` it is copied, so the next
    commit writes the WAL from its beginning: the file stays near that size over bursts of commits
    (without the rounds it would hold them all) and no TRUNCATE was needed."""

    def checkpointer(file: str) -> Checkpointer:
        return Checkpointer(file, interval=0.01, idle=0.01, restart_bytes=2 * MIB, max_wal_bytes=1 << 40)

    with SqliteSink(str(tmp_path), remainder=0, divisor=1, checkpoints=checkpointer) as sink:
        wal = Path(sink.file + "-wal")
        assert sink.checkpointer is not None
        stats = sink.checkpointer.stats
        sizes = []
        for burst in range(6):
            for number in range(3):
                sink.write(batch(burst * 3 + number))
            sizes.append(wal.stat().st_size)
            wait_until(lambda: sink.checkpointer is not None and sink.checkpointer.caught_up, 10,
                       "everything copied after the burst")
        # 6 bursts of ~4 MiB: without the rounds the file would hold all ~24 MiB.
        assert max(sizes) < 8 * MIB, sizes
        assert restarts(sink.file) >= 5, (restarts(sink.file), stats)
        assert stats.truncate == 0, stats


def test_the_restart_size_is_read_from_the_wal_index_not_the_file_size(tmp_path: Path) -> None:
    """After the WAL started over the file keeps its size; the log is measured from the wal-index header,
    so small commits after a big one are not taken for a full log and restart nothing."""

    def checkpointer(file: str) -> Checkpointer:
        return Checkpointer(file, interval=0.01, idle=0.01, restart_bytes=1 * MIB, max_wal_bytes=1 << 40)

    with SqliteSink(str(tmp_path), remainder=0, divisor=1, checkpoints=checkpointer) as sink:
        assert sink.checkpointer is not None
        checkpoints = sink.checkpointer
        sink.write(batch(0))  # ~1.3 MiB: past the restart size
        wait_until(lambda: checkpoints.caught_up, 10, "the big commit copied")
        sink.write(batch(1, size=1))  # starts the WAL over
        assert restarts(sink.file) == 1
        assert Path(sink.file + "-wal").stat().st_size > MIB  # the file kept its size
        for number in range(2, 30):
            sink.write(batch(number, size=1))
        assert checkpoints._log < MIB, checkpoints._log  # ~0.5 MiB: 28 small commits since the start over
        time.sleep(0.1)  # ten intervals: a round would have run by now
        assert restarts(sink.file) == 1, checkpoints.stats


def test_a_reader_holding_a_snapshot_delays_the_bound_but_never_a_commit(tmp_path: Path) -> None:
    """A reader with an open read transaction keeps the WAL from being cut back (the refused TRUNCATE is
    counted); commits go on meanwhile, and once the reader ends the WAL comes back under its bound."""
    bound = 2 * MIB

    def checkpointer(file: str) -> Checkpointer:
        return Checkpointer(file, interval=0.02, idle=0.02, max_wal_bytes=bound, busy_ms=20)

    with SqliteSink(str(tmp_path), remainder=0, divisor=1, checkpoints=checkpointer) as sink:
        sink.write(batch(0))
        reader = sqlite3.connect(sink.file, isolation_level=None)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == 400
        wal = Path(sink.file + "-wal")
        for number in range(1, 8):
            sink.write(batch(number))
        assert sink.checkpointer is not None
        wait_until(lambda: sink.checkpointer is not None and sink.checkpointer.stats.failed > 0, 10,
                   "a TRUNCATE checkpoint refused by the reader")
        assert wal.stat().st_size > bound
        assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == 400  # its snapshot held
        reader.execute("COMMIT")
        reader.close()
        sink.write(batch(8))
        wait_until(lambda: wal.stat().st_size <= bound, 10, "the WAL cut back once the reader is gone")


def test_the_thread_starts_with_the_first_batch_and_stops_on_close(tmp_path: Path) -> None:
    """Opening and loading start no thread, nor does retiring a shard (the parent does it, and it writes a
    status row: retire() opens the sink without a checkpointer); the first batch starts one, close stops it."""
    sink = open_sink("sqlite", path=str(tmp_path), remainder=0, divisor=1)
    try:
        list(sink.load())
        assert checkpointer_threads() == []
        sink.write(batch(0, size=3))
        assert len(checkpointer_threads()) == 1
    finally:
        sink.close()
    assert checkpointer_threads() == []
    assert retire(str(tmp_path), remainder=0, divisor=1) is not None
    assert checkpointer_threads() == []


class _Broken:
    """A connection whose every statement fails like a disk error."""

    def execute(self, *_: object) -> sqlite3.Cursor:
        raise sqlite3.OperationalError("disk I/O error")


@pytest.mark.parametrize("mode", ["PASSIVE", "TRUNCATE"])
def test_a_failed_checkpoint_is_counted_and_the_thread_lives_on(tmp_path: Path, mode: str) -> None:
    """A checkpoint that raises is counted with its error and the thread keeps serving later ones."""
    calls = {"n": 0}

    class Flaky(Checkpointer):
        def _checkpoint(self, conn: sqlite3.Connection, wanted: str) -> tuple[int, int, int] | None:
            calls["n"] += 1
            return super()._checkpoint(_Broken() if calls["n"] == 1 else conn, wanted)  # type: ignore[arg-type]

    def checkpointer(file: str) -> Checkpointer:
        return Flaky(file, interval=0.01, idle=0.01, max_wal_bytes=0 if mode == "TRUNCATE" else 1 << 40,
                     restart_bytes=0)

    with SqliteSink(str(tmp_path), remainder=0, divisor=1, checkpoints=checkpointer) as sink:
        sink.write(batch(0, size=10))
        assert sink.checkpointer is not None
        stats = sink.checkpointer.stats
        wait_until(lambda: stats.failed == 1, 10, "the failure counted")
        assert stats.last_error == "disk I/O error"
        sink.write(batch(1, size=10))
        wait_until(lambda: stats.passive + stats.truncate >= 1, 10, "a later checkpoint")
        assert sink.checkpointer.running
        if mode == "TRUNCATE":
            wait_until(lambda: stats.truncate >= 1, 10, "a TRUNCATE checkpoint past the bound")


def test_a_waiting_checkpointer_gets_the_gate_within_one_transaction() -> None:
    """A writer taking the gate again the moment it releases it (as a busy sink does) cannot keep a
    waiting checkpointer out: it gets in after the transaction under way, not after many."""
    gate = Gate()
    stop = threading.Event()
    transactions = [0]

    def writer() -> None:
        while not stop.is_set():
            with gate:
                transactions[0] += 1
                time.sleep(0.002)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        waits = []
        for _ in range(20):
            time.sleep(0.003)
            before = transactions[0]
            with gate.exclusive():
                waits.append(transactions[0] - before)
        assert max(waits) <= 1, waits
    finally:
        stop.set()
        thread.join()


def test_a_stalled_checkpoint_holds_the_writer_at_twice_the_bound(tmp_path: Path) -> None:
    """While a round is stuck (a PASSIVE copy behind a slow disk, here 0.3 s), commits that find the WAL
    past twice its bound wait for the round instead of growing the WAL without end (twice over)."""
    bound = 2 * MIB

    stalls = [2]

    class Slow(Checkpointer):
        def _checkpoint(self, conn: sqlite3.Connection, wanted: str) -> tuple[int, int, int] | None:
            if wanted == "PASSIVE" and stalls[0]:
                stalls[0] -= 1
                time.sleep(0.3)
            return super()._checkpoint(conn, wanted)

    def checkpointer(file: str) -> Checkpointer:
        return Slow(file, interval=0.01, idle=0.01, max_wal_bytes=bound, restart_bytes=0)

    with SqliteSink(str(tmp_path), remainder=0, divisor=1, checkpoints=checkpointer) as sink:
        wal = Path(sink.file + "-wal")
        peak = 0
        for number in range(16):
            sink.write(batch(number))
            peak = max(peak, wal.stat().st_size)
        assert sink.checkpointer is not None
        assert peak < 2 * bound + 2 * 1.4 * MIB, (peak, sink.checkpointer.stats)
        assert sink.checkpointer.stats.truncate > 0


def test_a_paced_stream_restarts_the_wal_between_two_commits(tmp_path: Path) -> None:
    """Under commits every 5 ms (never idle), rounds finish with a pass started as a commit ends and done
    before the next, so the WAL keeps starting over without the writer being held for it."""

    def checkpointer(file: str) -> Checkpointer:
        return Checkpointer(file, interval=0.05, idle=0.5, max_wal_bytes=1 << 40, restart_bytes=0)

    with SqliteSink(str(tmp_path), remainder=0, divisor=1, checkpoints=checkpointer) as sink:
        assert sink.checkpointer is not None
        stats = sink.checkpointer.stats
        started = time.monotonic()
        number = 0
        while time.monotonic() - started < 1.5:
            sink.write(batch(number, size=3))
            number += 1
            time.sleep(0.005)
        assert restarts(sink.file) >= 5, (restarts(sink.file), number, stats)
        # Without the passes timed after a commit, every round not finished by luck takes the gate.
        assert stats.aligned > 0 and stats.gated < stats.aligned, stats


def test_without_its_thread_the_sink_falls_back_to_sqlites_own_checkpoints(tmp_path: Path) -> None:
    """If the checkpointer's thread cannot start (or ends), the next commit turns SQLite's automatic
    checkpoint back on, so the WAL is still bounded, and the commit itself succeeds."""

    class Unstartable(Checkpointer):
        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    with SqliteSink(str(tmp_path), remainder=0, divisor=1, checkpoints=Unstartable) as sink:
        sink.write(batch(0, size=3))
        assert sink._connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == FALLBACK_CHECKPOINT_PAGES
        assert sink._connection().execute("SELECT count(*) FROM events").fetchone()[0] == 3


def test_an_unexpected_error_in_a_round_is_counted_and_checkpoints_go_on(tmp_path: Path) -> None:
    """A round that raises something other than an sqlite error (a bug, an OS error) is counted with its
    error; the thread reconnects and the next round checkpoints."""
    calls = {"n": 0}

    class Buggy(Checkpointer):
        def _round(self, conn: sqlite3.Connection, seen: int) -> tuple[Outcome, int]:
            calls["n"] += 1
            if calls["n"] == 1:
                raise ValueError("a bug")
            return super()._round(conn, seen)

    def checkpointer(file: str) -> Checkpointer:
        return Buggy(file, interval=0.01, idle=0.01, restart_bytes=0)

    with SqliteSink(str(tmp_path), remainder=0, divisor=1, checkpoints=checkpointer) as sink:
        sink.write(batch(0, size=10))
        assert sink.checkpointer is not None
        stats = sink.checkpointer.stats
        wait_until(lambda: stats.failed == 1 and stats.passive >= 1, 10, "the error counted, then a checkpoint")
        assert stats.last_error == "ValueError: a bug"
        assert sink.checkpointer.running
        assert sink._connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
