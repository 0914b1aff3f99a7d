"""shard_status through a real daemon's life: live -> worker SIGKILLed -> resyncing -> live (new session) -> stopped."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from harness import Daemon, wait_until

from shardsync.simulator import Simulator
from shardsync.sinks import Freshness
from shardsync.sinks.base import STATUS_SELECT


def status_of(path: Path) -> Freshness | None:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return None
    try:
        row = conn.execute(STATUS_SELECT).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return None if row is None else Freshness.from_row(row)


class Watch:
    """Every distinct (state, session) the shard's row showed, in order, sampled every 10 ms on a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            row = status_of(self.path)
            if row is not None and (not self.seen or self.seen[-1] != (str(row.state), row.session)):
                self.seen.append((str(row.state), row.session))

    def stop(self) -> list[tuple[str, str]]:
        self._stop.set()
        self._thread.join(5)
        return self.seen


def test_shard_status_through_kill_resync_and_stop(
    sim_factory: Callable[..., Simulator], daemon_factory: Callable[..., Daemon]
) -> None:
    """The row says live; after SIGKILL of the worker its replacement says resyncing while it takes a slow
    snapshot, then live with a new session; SIGTERM of the daemon leaves stopped (same session)."""
    sim = sim_factory(snapshot_mode="split", split_chunks=3, split_end="empty")
    daemon = daemon_factory(sim, divisor=1)
    shard = daemon.wait_live()[0]
    path = daemon.db_path(0)
    first = wait_until(lambda: (r := status_of(path)) and r.state == "live" and r, 10, "a live row")
    sim.configure(split_delay=1.0)  # the resync takes about 2 s: long enough for the watch to see it
    watch = Watch(path)
    os.kill(shard["pid"], signal.SIGKILL)
    wait_until(lambda: (p := daemon.shards()[0]["pid"]) and p != shard["pid"] and daemon.shards()[0]["state"] == "live",
               20, "the replacement live")
    live = wait_until(lambda: (r := status_of(path)) and r.state == "live" and r.session != first.session and r,
                      10, "a live row of a new session")
    # The watch samples on a thread a loaded machine may starve; the row stays live until the stop, so let it see it.
    wait_until(lambda: ("live", live.session) in watch.seen, 10, "the watch to sample the live row")
    assert daemon.stop() == 0
    seen = watch.stop()
    final = status_of(path)
    assert final is not None and final.state == "stopped" and final.session == live.session
    states = [state for state, _ in seen]
    # The killed worker wrote nothing more: its row said live until the replacement spoke.
    assert seen[0] == ("live", first.session)
    assert "resyncing" in states
    resyncing = states.index("resyncing")
    assert ("live", live.session) in seen[resyncing:]
    assert seen[-1] == ("stopped", live.session)
    assert live.snapshot_at is not None and first.snapshot_at is not None and live.snapshot_at > first.snapshot_at
