"""Soak: a worker across many reconnects and events, the parent across many worker restarts; RSS and fds.

Runs the real daemon (one shard) against an in-process simulator (the system-test harness):

* **worker**: the simulator streams generated changes and drops the socket once per round; the worker
  reconnects, resyncs and goes on.  RSS and open fds of the one worker process are read at a baseline
  (after a warm-up of 5 % of the rounds, at least 20) and at the end, both while it is live.
* **parent**: SIGKILL the worker once per round; the parent reaps it and forks the replacement (first
  restart immediate: stable_after is shorter than a round).  The parent's RSS and fds, same way.

Bounds (growth from the baseline to the end): RSS at most ``RSS_BOUND_KIB``, fds at most ``FD_SLACK``
(a status scrape or a socket mid-close may hold one).  A leak of one fd per reconnect or restart, or of a
few hundred bytes per event, is far beyond either.

    .venv/bin/python bench/soak.py                          # 10,000 reconnects, 1M events, 1,000 restarts
    .venv/bin/python bench/soak.py --reconnects 500 --events 50000 --restarts 100
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "system"))

from harness import Daemon, wait_until

from shardsync.simulator import Simulator

#: What the daemon subscribes to by default: only these reach the worker.
TYPES = frozenset({"user", "account", "accountRiskStatus", "cashBalance", "position", "order", "fill"})
#: Split snapshots with an end marker: complete at once (no quiet period to wait out per round).
SNAPSHOTS: dict[str, Any] = {"snapshot_mode": "split", "split_chunks": 2, "split_end": "empty"}
RSS_BOUND_KIB = 16 * 1024
FD_SLACK = 2
SECTIONS: dict[str, dict[str, Any]] = {
    "supervisor": {"heartbeat_interval": 0.05, "heartbeat_timeout": 10.0, "backoff_initial": 0.01,
                   "backoff_max": 0.05, "stable_after": 0.05, "intensity": 10_000, "period": 1.0,
                   "connect_spacing": 0.0, "max_concurrent_connects": 4, "shutdown_timeout": 5.0},
}


@dataclass(frozen=True)
class Sample:
    rss_kib: int
    fds: int


@dataclass
class Soak:
    """One soak's figures."""

    name: str
    rounds: int
    events: int
    seconds: float
    baseline: Sample
    end: Sample
    peak_rss_kib: int

    @property
    def rss_growth_kib(self) -> int:
        return self.end.rss_kib - self.baseline.rss_kib

    @property
    def fd_growth(self) -> int:
        return self.end.fds - self.baseline.fds

    @property
    def within_bounds(self) -> bool:
        return self.rss_growth_kib <= RSS_BOUND_KIB and self.fd_growth <= FD_SLACK

    def report(self) -> str:
        return (f"{self.name}: {self.rounds} rounds, {self.events} events in {self.seconds:.0f}s; "
                f"RSS {self.baseline.rss_kib / 1024:.1f} -> {self.end.rss_kib / 1024:.1f} MiB "
                f"(growth {self.rss_growth_kib / 1024:+.1f} MiB, bound {RSS_BOUND_KIB / 1024:.0f}; peak "
                f"{self.peak_rss_kib / 1024:.1f}), fds {self.baseline.fds} -> {self.end.fds} (bound +{FD_SLACK}): "
                f"{'within bounds' if self.within_bounds else 'BEYOND BOUNDS'}")


def sample(pid: int) -> Sample:
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return Sample(rss, len(os.listdir(f"/proc/{pid}/fd")))


def _shard(daemon: Daemon) -> dict[str, Any]:
    return daemon.shards()[0]


def _live(daemon: Daemon, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        if daemon.proc is not None and daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {daemon.proc.returncode}")
        shard = _shard(daemon)
        return shard if shard["state"] == "live" and shard["pid"] and check(shard) else None

    result: dict[str, Any] = wait_until(ready, 30, what)
    return result


def _start(home: Path, sim: Simulator) -> Daemon:
    daemon = Daemon(home, sim, divisor=1, sections=SECTIONS).start()
    _live(daemon, lambda s: True, "the shard live")
    return daemon


def worker_soak(reconnects: int, events: int, say: Callable[[str], Any] | None = print) -> Soak:
    """``reconnects`` rounds of (stream ~events/reconnects changes, drop the socket) through one worker."""
    per_round = max(1, events // max(1, reconnects))
    warmup = max(20, reconnects // 20)
    with Simulator(event_rate=0, accounts=8, users=3, seed=11, **SNAPSHOTS) as sim:
        home = Path(tempfile.mkdtemp(prefix="soak-worker-"))
        daemon = _start(home, sim)
        try:
            pid = int(_shard(daemon)["pid"])
            started, sent, peak = time.monotonic(), 0, 0
            baseline: Sample | None = None
            for round_ in range(reconnects):
                sent += sum(1 for change in sim.step(per_round) if change.entity_type in TYPES)
                before = _shard(daemon)["reconnects"]
                _live(daemon, lambda s, n=sent: s["events"] >= n, f"{sent} events applied")
                sim.drop()
                _live(daemon, lambda s, b=before: s["reconnects"] > b, f"reconnect {round_ + 1}")
                if round_ + 1 == warmup:
                    baseline = sample(pid)
                if round_ % 50 == 0:
                    peak = max(peak, sample(pid).rss_kib)
                if say is not None and (round_ + 1) % 500 == 0:
                    say(f"  worker: {round_ + 1} reconnects, {sent} events, RSS {sample(pid).rss_kib / 1024:.1f} MiB")
            end = sample(pid)
            assert _shard(daemon)["pid"] == pid, "the worker itself must survive every reconnect"
            assert baseline is not None
            return Soak("worker", reconnects, int(_shard(daemon)["events"]), time.monotonic() - started, baseline,
                        end, max(peak, end.rss_kib))
        finally:
            daemon.stop()


def parent_soak(restarts: int, say: Callable[[str], Any] | None = print) -> Soak:
    """``restarts`` rounds of SIGKILL the worker, wait for its replacement to be live."""
    warmup = max(20, restarts // 20)
    with Simulator(event_rate=0, accounts=8, users=3, seed=12, **SNAPSHOTS) as sim:
        home = Path(tempfile.mkdtemp(prefix="soak-parent-"))
        daemon = _start(home, sim)
        try:
            parent = daemon.pid
            started, peak = time.monotonic(), 0
            baseline: Sample | None = None
            for round_ in range(restarts):
                old = int(_shard(daemon)["pid"])
                os.kill(old, signal.SIGKILL)
                _live(daemon, lambda s, o=old: s["pid"] != o, f"restart {round_ + 1}")
                if round_ + 1 == warmup:
                    baseline = sample(parent)
                if round_ % 25 == 0:
                    peak = max(peak, sample(parent).rss_kib)
                if say is not None and (round_ + 1) % 250 == 0:
                    say(f"  parent: {round_ + 1} restarts, RSS {sample(parent).rss_kib / 1024:.1f} MiB")
            end = sample(parent)
            restarted = int(_shard(daemon)["restarts"])
            assert restarted == restarts, f"the parent counted {restarted} restarts for {restarts} kills"
            assert baseline is not None
            return Soak("parent", restarts, 0, time.monotonic() - started, baseline, end, max(peak, end.rss_kib))
        finally:
            daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reconnects", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--restarts", type=int, default=1_000)
    args = parser.parse_args()
    results = [worker_soak(args.reconnects, args.events), parent_soak(args.restarts)]
    for result in results:
        print(result.report())
    return 0 if all(r.within_bounds for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
