"""WAL checkpoints of one sqlite shard file, off the commit path: a thread with its own connection.

With ``wal_autocheckpoint = 0`` no commit copies the WAL into the database
file (SQLite's automatic checkpoint runs inside the commit that crosses its
threshold: the p99 of issue 16).  This thread does the work instead, and it
does as little of it as keeps the WAL bounded, because every time the WAL
starts over the commit that starts it fsyncs the WAL header (the
``synchronous=NORMAL`` rule), on the worker's own thread.  Copying
everything at every pause, as this thread once did, made that nearly every
commit of a quiet shard (a demo shard's writer: 39 fsyncs in 6 s), and a disk that
stalls for 2 s stalled the worker's heartbeats with it.  So:

* every ``sync_every`` seconds while commits go on, the thread fsyncs the WAL
  file itself: commits become durable within that (what the copies used to
  give) without copying anything, so the WAL goes on growing and no commit
  has a header to sync;
* once the log since the WAL last started over reaches ``restart_bytes``
  (the wal-index header's frame count, read at each commit), a round:
  PASSIVE checkpoints, which take no lock a writer needs, so commits go on
  while they copy and fsync, each copying what the commits added during the
  one before; then, holding the writer off through the sink's :class:`Gate`,
  a last one for the little that is left.  With every frame copied the next
  commit starts the WAL over from its beginning: one writer fsync per
  ``restart_bytes`` of log.  Before it takes the gate it tries a few passes
  started the moment a commit ends: one that finishes before the next commit
  does the same without holding anything up (its fsyncs are what the gate
  would expose a commit to, and on a shared file system they take 1 to 50 ms).
  Rounds are at least ``interval`` apart;
* when the WAL file is past ``max_wal_bytes`` (noticed at the commit that
  grows it there, not an interval later): the same, with a TRUNCATE
  checkpoint as the gated step, which cuts the file back to nothing.
* past twice that (a round stuck behind a slow disk while the writer goes
  on), the commit that finds it so waits for the round to end, at most
  ``MAX_STALL`` seconds: the one case where a commit waits for a
  checkpoint, and only while the last round succeeded (a refused or failing
  checkpoint would not cut the WAL anyway).

The writer waits for the gate on a Python lock, woken the moment the
checkpoint is done, rather than in SQLite's sleep-and-retry busy handler.
A reader's open snapshot can refuse the gated step (its frames must stay);
that is counted as a failure, and the next rounds back off (doubling up to
``MAX_BACKOFF``) since each attempt holds the writer up to ``busy_ms``.

The sink starts the thread on its first write, in the process that writes
(a worker is forked without threads), and stops it before it closes.
"""

from __future__ import annotations

import contextlib
import enum
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from shardsync.logs import get_logger
from shardsync.sinks.sqlite_gate import Gate
from shardsync.sinks.sqlite_wal import WalIndex, sync_wal, wal_bytes

THREAD_NAME = "shardsync-checkpoint"
#: The least time between two rounds, and between a refused or incomplete round and the next try.
INTERVAL = 0.5
#: How long a pass timed after a commit waits for that commit, seconds.
IDLE = 0.05
#: The log since the WAL last started over past which a round copies it and lets it start over again.
RESTART_BYTES = 4 << 20
#: Seconds between two fsyncs of the WAL by the thread while commits go on (the durability window).
SYNC_EVERY = 1.0
#: The WAL file size past which a TRUNCATE checkpoint cuts it back.
MAX_WAL_BYTES = 32 << 20
#: How long a gated checkpoint waits for readers (it holds the writer meanwhile).
BUSY_MS = 20
#: The longest pause after refused attempts, seconds.
MAX_BACKOFF = 8.0
#: PASSIVE passes after the first while they take longer than SHORT_PASS seconds (and shrink).
EXTRA_PASSES = 3
SHORT_PASS = 0.002
#: Passes timed right after a commit, to finish in the gap before the next, before the gate is used.
ALIGNED_TRIES = 3
#: The longest a commit waits for a round when the WAL is past twice its bound, seconds.
MAX_STALL = 1.0

log = get_logger("shardsync.sink")


@dataclass
class CheckpointStats:
    """What the thread did; read from other threads (single int/str stores, no lock needed)."""

    passive: int = 0
    truncate: int = 0
    #: fsyncs of the WAL file by the thread, with nothing copied.
    synced: int = 0
    #: Rounds finished by a pass between two commits, with no commit held.
    aligned: int = 0
    #: Rounds finished with the writer held off (the gate).
    gated: int = 0
    failed: int = 0
    last_error: str = ""


class Outcome(enum.Enum):
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    REFUSED = "refused"


class Checkpointer:
    """Checkpoints ``file``'s WAL from a thread of its own; the sink calls :meth:`committed` after each write."""

    def __init__(
        self,
        file: str,
        *,
        interval: float = INTERVAL,
        idle: float = IDLE,
        max_wal_bytes: int = MAX_WAL_BYTES,
        restart_bytes: int = RESTART_BYTES,
        sync_every: float = SYNC_EVERY,
        busy_ms: int = BUSY_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.file = file
        self.interval, self.idle = interval, idle
        self.max_wal_bytes, self.busy_ms = max_wal_bytes, busy_ms
        self.restart_bytes, self.sync_every = restart_bytes, sync_every
        self.stats = CheckpointStats()
        self.gate = Gate()
        self._clock = clock
        self._wake = threading.Event()
        self._commits = 0
        self._copied_through = 0  # every commit up to this count is in the database file
        # The log since the WAL last started over, as the writer found it after its last commit.
        self._log = 0
        self._syncs_only = False  # the thread waits for a sync with no round due: a full log must wake it
        self._index = WalIndex(file)  # read by the writer only, after its commits
        self._sleeping = False
        self._awaiting = False
        self._next_commit = threading.Event()
        self._over = False
        self._healthy = True  # the last round copied everything it could
        self._round_ended = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None or self._stopping

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def caught_up(self) -> bool:
        """Every commit so far is copied into the database file (the next one starts the WAL over)."""
        return self._copied_through == self._commits

    def start(self) -> None:
        if self.started:
            return
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """A write transaction ended: frames to copy.  The writer calls it after each one: a few microseconds."""
        self._commits += 1
        if self._awaiting:
            self._next_commit.set()
        self._log = log = self._log_bytes()
        # A thread counting down to a round sees the commit when it gets
        # there; only one waiting for a first commit, one waiting for a sync
        # while the log is due to start over, or a WAL past its bound needs waking.
        if self._sleeping:
            self._wake.set()
            return
        if self._syncs_only and log >= self.restart_bytes:
            self._syncs_only = False
            self._wake.set()
        wal = wal_bytes(self.file)
        if wal <= self.max_wal_bytes:
            return
        if not self._over:
            self._over = True
            self._wake.set()
        if wal > 2 * self.max_wal_bytes and self._healthy and self.running:
            self._round_ended.clear()
            self._over = True
            self._wake.set()
            self._round_ended.wait(MAX_STALL)

    def stop(self) -> None:
        """Stop the thread and wait for it (a checkpoint under way finishes first)."""
        self._stopping = True
        self._wake.set()
        self._next_commit.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._index.close()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        seen = 0  # commits when the last round began: the ones after it are not copied yet
        synced = 0  # commits when the WAL was last fsynced (by a sync or a round)
        last_round = last_sync = self._clock()
        incomplete = False
        refusals = 0
        try:
            while not self._stopping:
                self._wake.clear()
                now = self._clock()
                commits = self._commits
                round_due: float | None = None
                if self._over:
                    round_due = now
                elif incomplete or (commits != seen and self._log >= self.restart_bytes):
                    round_due = last_round + self.interval
                    if refusals:
                        round_due = max(round_due, last_round + min(self.interval * (1 << min(refusals, 16)),
                                                                    max(self.interval, MAX_BACKOFF)))
                sync_due = None if commits == synced else last_sync + self.sync_every
                if round_due is None and sync_due is None:
                    self._sleeping = True
                    if self._commits == synced and not self._stopping:
                        self._wake.wait()
                    self._sleeping = False
                    continue
                due = min(at for at in (round_due, sync_due) if at is not None)
                if now < due:
                    self._syncs_only = round_due is None
                    if not self._syncs_only or self._commits == commits:
                        self._wake.wait(due - now)
                    self._syncs_only = False
                    continue
                if round_due is None or now < round_due:
                    # Durable without a copy: the WAL goes on growing and no commit restarts it.
                    if self._sync_wal():
                        synced = commits
                    last_sync = now
                    continue
                seen, last_round, self._over = commits, now, False
                done = self.stats.passive + self.stats.truncate
                if conn is None:
                    conn = self._connect()
                    if conn is None:
                        incomplete = True
                        continue
                try:
                    outcome, seen = self._round(conn, seen)
                except Exception as exc:  # a bug or an OS error must not end the checkpoints
                    self._failed(f"{type(exc).__name__}: {exc}")
                    outcome = Outcome.INCOMPLETE
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
                    conn = None
                if self.stats.passive + self.stats.truncate > done:
                    # A checkpoint fsyncs the WAL before it copies: those commits are durable.
                    synced, last_sync = commits, now
                incomplete = outcome is not Outcome.COMPLETE
                if not incomplete:
                    self._copied_through = seen
                self._healthy = not incomplete
                refusals = refusals + 1 if outcome is Outcome.REFUSED else 0
                self._round_ended.set()
        finally:
            self._round_ended.set()
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def _connect(self) -> sqlite3.Connection | None:
        try:
            conn = sqlite3.connect(self.file, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            self._failed(f"cannot open {self.file}: {exc}")
            return None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_ms)}")
            # It never writes; this only keeps a stray statement from checkpointing inline.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            conn.close()
            self._failed(f"cannot open {self.file}: {exc}")
            return None
        return conn

    def _round(self, conn: sqlite3.Connection, seen: int) -> tuple[Outcome, int]:
        """One round; returns how it went and the commit count everything up to which is in the file."""
        # A pass copies what was there when it began; what the commits add
        # meanwhile is the next pass's work, a fraction of it while copying
        # outruns writing (about 6x on this schema).  So passes go on while
        # they are long and getting shorter, and what the gated step below
        # copies, holding the writer, is what one short pass let pile up.
        previous = float("inf")
        for _ in range(1 + EXTRA_PASSES):
            began = self._clock()
            complete = self._passive(conn)
            if complete is None:
                return Outcome.INCOMPLETE, seen
            took = self._clock() - began
            if complete and self._commits == seen:
                break
            if took <= SHORT_PASS or took >= previous:
                break
            previous = took
        truncate = wal_bytes(self.file) > self.max_wal_bytes
        if complete and self._commits == seen and not truncate:
            return Outcome.COMPLETE, seen
        if not truncate:
            # A short pass started the moment a commit ends has the whole gap
            # before the next one to finish in: then the WAL starts over with
            # no commit held up.  The gate is for streams with no such gap.
            for _ in range(ALIGNED_TRIES):
                if self._over:
                    break  # past the bound meanwhile: the writer may be waiting for this round
                self._after_next_commit(self.idle)
                mark = self._commits
                complete = self._passive(conn)
                if complete is None:
                    return Outcome.INCOMPLETE, seen
                if complete and self._commits == mark:
                    self.stats.aligned += 1
                    return Outcome.COMPLETE, mark
            truncate = wal_bytes(self.file) > self.max_wal_bytes
        wanted = "TRUNCATE" if truncate else "PASSIVE"
        with self.gate.exclusive():
            commits = self._commits
            result = self._checkpoint(conn, wanted)
        self.stats.gated += 1
        if result is None:
            return Outcome.INCOMPLETE, seen
        busy, frames, copied = result
        if busy:
            self._failed(f"{wanted} checkpoint refused: a reader holds an older snapshot of the WAL, "
                         "or another checkpoint runs")
            return Outcome.REFUSED, seen
        if truncate:
            self.stats.truncate += 1
        else:
            self.stats.passive += 1
            if copied < frames:
                # A reader's snapshot keeps the rest; a later round tries again.
                return Outcome.INCOMPLETE, seen
        return Outcome.COMPLETE, commits

    def _after_next_commit(self, timeout: float) -> None:
        self._next_commit.clear()
        self._awaiting = True
        try:
            self._next_commit.wait(timeout)
        finally:
            self._awaiting = False

    def _passive(self, conn: sqlite3.Connection) -> bool | None:
        """One PASSIVE checkpoint, writer not held: whether it copied every frame, or None when it failed."""
        result = self._checkpoint(conn, "PASSIVE")
        if result is None:
            return None
        busy, frames, copied = result
        if busy:
            # Only another checkpoint (e.g. an operator's shell) refuses a PASSIVE one.
            self._failed("PASSIVE checkpoint refused: another checkpoint is running")
            return None
        self.stats.passive += 1
        return copied >= frames

    def _checkpoint(self, conn: sqlite3.Connection, wanted: str) -> tuple[int, int, int] | None:
        """``PRAGMA wal_checkpoint(wanted)``: (busy, WAL frames, frames copied), or None when it raised."""
        try:
            row = conn.execute(f"PRAGMA wal_checkpoint({wanted})").fetchone()
        except sqlite3.Error as exc:
            self._failed(str(exc))
            return None
        return int(row[0]), int(row[1]), int(row[2])

    def _failed(self, error: str) -> None:
        # Logged when it changes, not at every retry: a reader can hold the WAL for minutes.
        if self.stats.last_error != error:
            log.warning("sqlite_checkpoint_failed", file=self.file, error=error)
        self.stats.failed += 1
        self.stats.last_error = error

    def _sync_wal(self) -> bool:
        """fsync the WAL file (the commits in it become durable); False when that failed."""
        try:
            sync_wal(self.file)
        except OSError as exc:
            self._failed(f"fsync of {self.file}-wal failed: {exc}")
            return False
        self.stats.synced += 1
        return True

    def _log_bytes(self) -> int:
        """The log since the WAL last started over; the file's size if the wal-index cannot be read (an
        overestimate: rounds come sooner, never later)."""
        log = self._index.log_bytes()
        return wal_bytes(self.file) if log is None else log
