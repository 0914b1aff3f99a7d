"""Resource figures: parent CPU at idle, memory per worker, start-up time by shard count.

Runs the real daemon against an in-process simulator (system-test harness).
Baselines run in the same process tree: a bare Python interpreter idling
(for memory) and a 1-shard daemon (for start-up time).

    .venv/bin/python bench/resources.py [--idle-seconds 10] [--counts 1,16,64]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The system-test harness (and its polling helper) drive the real daemon here too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "system"))

from harness import Daemon, wait_until

from shardsync.simulator import Simulator

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB; PSS splits pages shared after fork between the sharers."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        values[key] = int(value.split()[0])
    return values["Rss"], values["Pss"]


def startup(counts: list[int], spacing: float, concurrent: int) -> dict[int, float]:
    results = {}
    for count in counts:
        with Simulator(event_rate=0, accounts=max(count, 8), users=min(max(count, 8), 8)) as sim:
            tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
            sections = {"supervisor": {"connect_spacing": spacing, "max_concurrent_connects": concurrent}}
            start = time.perf_counter()
            with Daemon(tmp, sim, divisor=count, sections=sections) as daemon:
                daemon.wait_live(300)
                results[count] = time.perf_counter() - start
    return results


def idle(shards: int, seconds: float) -> None:
    with Simulator(event_rate=0, accounts=shards * 2, users=shards) as sim:
        tmp = Path(tempfile.mkdtemp(prefix="bench-idle-"))
        with Daemon(tmp, sim, divisor=shards,
                    sections={"supervisor": {"heartbeat_interval": 1.0, "heartbeat_timeout": 10.0}}) as daemon:
            shard_table = daemon.wait_live(120)
            workers = [s["pid"] for s in shard_table.values()]
            time.sleep(2)  # let start-up work finish before the idle window
            before = cpu_seconds(daemon.pid), [cpu_seconds(w) for w in workers]
            time.sleep(seconds)
            after = cpu_seconds(daemon.pid), [cpu_seconds(w) for w in workers]
            parent_pct = 100 * (after[0] - before[0]) / seconds
            worker_pct = [100 * (a - b) / seconds for a, b in zip(after[1], before[1], strict=True)]
            mem = [memory_kib(w) for w in workers]
            parent_mem = memory_kib(daemon.pid)
        bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            wait_until(lambda: Path(f"/proc/{bare.pid}/smaps_rollup").exists(), 5)
            time.sleep(0.5)
            bare_mem = memory_kib(bare.pid)
        finally:
            bare.kill()
            bare.wait()
    avg_rss = sum(m[0] for m in mem) / len(mem)
    avg_pss = sum(m[1] for m in mem) / len(mem)
    print(f"idle, {shards} shards, {seconds:g} s window (heartbeat_interval 1 s, no events):")
    print(f"  parent CPU {parent_pct:5.2f} % of one core; workers avg {sum(worker_pct) / len(worker_pct):5.2f} %")
    print(f"  parent RSS {parent_mem[0] / 1024:6.1f} MiB  PSS {parent_mem[1] / 1024:6.1f} MiB")
    print(f"  worker RSS {avg_rss / 1024:6.1f} MiB  PSS {avg_pss / 1024:6.1f} MiB (avg of {len(mem)}); "
          f"bare python RSS {bare_mem[0] / 1024:5.1f} MiB -> worker/bare RSS ratio {avg_rss / bare_mem[0]:4.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--counts", default="1,16,64")
    parser.add_argument("--spacing", type=float, default=0.05, help="connect_spacing for the start-up runs")
    parser.add_argument("--concurrent", type=int, default=4, help="max_concurrent_connects for start-up")
    args = parser.parse_args()
    idle(16, args.idle_seconds)
    counts = [int(c) for c in args.counts.split(",")]
    times = startup(counts, args.spacing, args.concurrent)
    base = times[counts[0]]
    print(f"start-up to all live (connect_spacing {args.spacing:g} s, max_concurrent_connects {args.concurrent}):")
    for count, seconds in times.items():
        print(f"  {count:>3} shards {seconds:6.2f} s  ratio to {counts[0]} shard(s) {seconds / base:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
