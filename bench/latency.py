"""Server write -> row visible in sqlite, at 100 / 1,000 / 5,000 live events/s: p50, p99, max.

The simulator runs with ``stamp_entities``: as it writes a live props frame it
puts the time (``time.time()``) into the entity, so the stamp travels with the
change into the ``events`` row.  A reader in this process polls the shard
file the cheap way: ``PRAGMA data_version`` (no I/O, it changes when another
connection commits) every ``--poll`` seconds, and only when it changed a
``SELECT seq, json_extract(data, '$.ts') ... WHERE seq > last`` of the new
rows; the moment the change was seen is taken before that read.  So a
sample is "server write -> committed and visible to a reader", with up to
one poll interval (0.5 ms by default) added; the reader's own CPU share is
printed so its cost on the shared machine is known.

The simulator generates its changes in 50 ms ticks (server.py), so at 5,000
events/s a tick is a burst of ~250 frames written together: the last of them
waits for the ones before it, as it would behind any burst.  Its event rate
is in generator steps; a calibration burst before the runs gives the
subscribed changes per step, and each run's warm-up corrects that once.

Readers, paired at each rate (the same source, one after the other):
``reference`` is the hand-written mirror of bench/reference.py (the reference
pragmas: automatic checkpoints inside the commit that triggers them);
``sqlite`` is the real worker.

    .venv/bin/python bench/latency.py [--rates 100,1000,5000] [--seconds 20] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference
from forked import DEFAULT_TYPES, ForkedWorker, SimProcess, quiet_logs
from machine import header, info, percentile, save

WARMUP = 2.0
FILE = "shard-000-of-001.sqlite3"


def calibrate(sim: SimProcess, steps: int = 2000) -> float:
    """Subscribed changes per generator step (no reader is connected yet: nothing is sent)."""
    changes = sim.admin("step", {"count": steps})["result"]
    return sum(1 for c in changes if c["entityType"] in DEFAULT_TYPES) / steps


def sample(path: Path, seconds: float, poll: float) -> tuple[list[float], float]:
    """Latencies (seconds) of the live rows committed during ``seconds``, and the reader's CPU seconds."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=5)
    try:
        last_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        latencies: list[float] = []
        cpu = time.process_time()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            now_version = conn.execute("PRAGMA data_version").fetchone()[0]
            if now_version == version:
                time.sleep(poll)
                continue
            seen = time.time()
            version = now_version
            rows = conn.execute("SELECT seq, json_extract(data, '$.ts') FROM events WHERE seq > ?",
                                (last_seq,)).fetchall()
            for seq, ts in rows:
                last_seq = seq
                if ts is not None:
                    latencies.append(seen - ts)
        return latencies, time.process_time() - cpu
    finally:
        conn.close()


def measure(sim: SimProcess, name: str, target: int, *, per_step: float, seconds: float,
            poll: float) -> dict[str, Any]:
    steps_per_s = target / per_step
    state = Path(tempfile.mkdtemp(prefix=f"bench-latency-{name}-"))
    worker: ForkedWorker | None = None
    pid = 0
    try:
        if name == "reference":
            pid = reference.fork(sim.port, sim.token(), str(state / FILE), DEFAULT_TYPES)
        else:
            worker = ForkedWorker(sim, kind="sqlite", path=str(state))
            worker.wait(lambda b: b.state == "live", 60, "live")
            pid = worker.pid
        sim.admin("configure", {"event_rate": steps_per_s})
        # The changes per step drift as the books fill up: the warm-up's own rate corrects the step rate once.
        warm, _ = sample(state / FILE, WARMUP, poll)
        if warm:
            sim.admin("configure", {"event_rate": steps_per_s * target / (len(warm) / WARMUP)})
            sample(state / FILE, WARMUP / 2, poll)
        latencies, reader_cpu = sample(state / FILE, seconds, poll)
        sim.admin("configure", {"event_rate": 0})
    finally:
        if worker is not None:
            worker.stop()
        elif pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        wal = state / (FILE + "-wal")
        wal_mib = wal.stat().st_size / 1048576 if wal.exists() else 0.0
        shutil.rmtree(state, ignore_errors=True)
    ms = [x * 1000 for x in latencies]
    return {"reader": name, "samples": len(ms), "events_s": len(ms) / seconds, "p50_ms": percentile(ms, 0.5),
            "p99_ms": percentile(ms, 0.99), "max_ms": max(ms, default=float("nan")),
            "reader_cpu_pct": 100 * reader_cpu / seconds, "wal_mib_at_end": wal_mib}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="100,1000,5000", help="target live events/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per reader and rate")
    parser.add_argument("--poll", type=float, default=0.0005, help="reader poll interval, seconds")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--label", default="", help="a word for the results file name (before, after)")
    args = parser.parse_args()
    quiet_logs()
    machine = info()
    runs: list[dict[str, Any]] = []
    with SimProcess("--accounts", "20", "--users", "4", "--batch", "1", "--stamp-entities") as sim:
        per_step = calibrate(sim)
        for repeat in range(args.repeat):
            for rate in (int(r) for r in args.rates.split(",")):
                for name in ("reference", "sqlite"):
                    run = measure(sim, name, rate, per_step=per_step, seconds=args.seconds, poll=args.poll)
                    runs.append({"rate": rate, "repeat": repeat, **run})
    machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"latency, server write -> visible row ({header(machine)}), {args.seconds:g} s per run, "
          f"medians of {args.repeat}:")
    print("| rate/s | reader | events/s | p50 ms | p99 ms | max ms | p99 / reference | reader CPU % |")
    print("|---|---|---|---|---|---|---|---|")
    table = []
    for rate in dict.fromkeys(r["rate"] for r in runs):
        rows = {name: [r for r in runs if r["rate"] == rate and r["reader"] == name]
                for name in ("reference", "sqlite")}
        ref_p99 = statistics.median(r["p99_ms"] for r in rows["reference"])
        for name, mine in rows.items():
            row = {k: statistics.median(r[k] for r in mine) for k in ("events_s", "p50_ms", "p99_ms", "max_ms",
                                                                      "reader_cpu_pct")}
            table.append({"rate": rate, "reader": name, **row})
            print(f"| {rate:,} | {name} | {row['events_s']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
                  f"| {row['max_ms']:.1f} | {row['p99_ms'] / ref_p99:.2f} | {row['reader_cpu_pct']:.1f} |")
    payload = {"seconds": args.seconds, "poll": args.poll, "changes_per_step": per_step, "table": table,
               "runs": runs}
    print(f"results: {save('latency', machine, payload, args.label)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
