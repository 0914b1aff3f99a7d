"""Failover figures: SIGKILL of a worker -> replacement live; SIGSTOP -> replaced and live.

Runs the real daemon (`shardsync run`) against an in-process simulator, using
the system-test harness.  Each shard is killed once (so every restart is a
first restart, which the policy makes immediate); the clock runs from the
signal to the moment /status shows a new pid, and then that pid live (its
snapshot reconciled).  Two simulator variants are measured: a snapshot ending
with an explicit end marker, and one without (the worker's quiet rule,
1.0 s, decides completion).

    .venv/bin/python bench/failover.py [--shards 8]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The system-test harness (and its polling helper) drive the real daemon here too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "system"))

from harness import Daemon, wait_until

from shardsync.simulator import Simulator


def measure(daemon: Daemon, remainder: int, sig: int) -> tuple[float, float]:
    """Seconds from ``sig`` to a new pid in /status, and to that pid being live."""
    old = daemon.shards()[remainder]["pid"]
    start = time.perf_counter()
    os.kill(old, sig)
    replaced = 0.0
    while True:
        shard = daemon.shards()[remainder]
        if shard["pid"] not in (None, old):
            replaced = replaced or time.perf_counter() - start
            if shard["state"] == "live":
                return replaced, time.perf_counter() - start
        if time.perf_counter() - start > 60:
            raise RuntimeError(f"shard {remainder} not replaced within 60 s")
        time.sleep(0.005)


def run(variant: str, shards: int, sim_options: dict[str, object]) -> None:
    with Simulator(event_rate=20, accounts=4 * shards, users=shards, **sim_options) as sim:
        tmp = Path(tempfile.mkdtemp(prefix="bench-failover-"))
        # A short period: the bench fails every shard twice on purpose, which the
        # global breaker would otherwise (rightly) read as most shards failing.
        sections = {"supervisor": {"heartbeat_interval": 0.25, "heartbeat_timeout": 2.0, "period": 1.0}}
        with Daemon(tmp, sim, divisor=shards, sections=sections) as daemon:
            daemon.wait_live(60)
            kills = [measure(daemon, r, signal.SIGKILL) for r in range(shards)]
            wait_until(lambda: all(s["state"] == "live" for s in daemon.shards().values()), 30)
            stops = [measure(daemon, r, signal.SIGSTOP) for r in range(min(shards, 4))]
        report(f"{variant}: SIGKILL", kills)
        report(f"{variant}: SIGSTOP (heartbeat_timeout 2.0 s)", stops)


def report(name: str, samples: list[tuple[float, float]]) -> None:
    replaced = [r for r, _ in samples]
    live = [lv for _, lv in samples]
    print(f"  {name:<48} replaced median {statistics.median(replaced):6.3f} s max {max(replaced):6.3f} s | "
          f"live median {statistics.median(live):6.3f} s max {max(live):6.3f} s  (n={len(samples)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=8)
    args = parser.parse_args()
    print(f"failover: {args.shards} shards, first restart immediate, times from the signal")
    run("end marker", args.shards, {"snapshot_mode": "split", "split_chunks": 2, "split_end": "empty"})
    run("no end marker (quiet rule)", args.shards, {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
