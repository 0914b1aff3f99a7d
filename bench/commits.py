"""The sqlite sink's commit times under a paced stream: SQLite's automatic checkpoints against the checkpointer.

``bench/latency.py`` measures the whole path (simulator, socket, worker,
sink, reader) and its tails are mostly the simulator's 50 ms bursts and the
machine's noise; this one isolates what issue 16 item 3 is about: a commit
that runs a checkpoint inline.  A shard file is loaded with ``--entities``
orders (and closed, so the stream starts with an empty WAL), then ``rate`` changes a second are written through the real
``SqliteSink.write`` in batches every ``--period`` seconds (as the worker's
flush does), paced on an absolute schedule, for ``--seconds``; each
``write()`` is timed.  Paired, in the same run:

``autocheckpoint`` (the reference): the sink as it was when the issue was
filed, SQLite's automatic checkpoint every 4096 pages inside the commit
that crosses it (``checkpoints=None`` and ``wal_autocheckpoint = 4096``);
``checkpointer``: the sink as it ships (``wal_autocheckpoint = 0``, the
checkpointer thread).

    .venv/bin/python bench/commits.py [--rates 1000,5000] [--seconds 10] [--repeat 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import header, info, percentile, save
from shardsync.change import Change
from shardsync.sinks.sqlite import SqliteSink
from shardsync.sinks.sqlite_wal import restarts as wal_restarts

AT = "2026-01-01T00:00:00.000Z"
READERS = ("autocheckpoint", "checkpointer")


def order(n: int, status: str) -> dict[str, Any]:
    """An order shaped like the benches' (~170 bytes of JSON)."""
    return {"id": 6_000_001 + n, "accountId": 4_000_001 + n % 200, "contractId": 13_000_001, "timestamp": AT,
            "action": "Buy" if n % 2 else "Sell", "ordStatus": status, "admin": False, "executionProviderId": 1,
            "ts": time.time()}


def open_sink(directory: str, variant: str) -> SqliteSink:
    if variant == "autocheckpoint":
        sink = SqliteSink(directory, remainder=0, divisor=1, checkpoints=None)
        sink._connection().execute("PRAGMA wal_autocheckpoint = 4096")
        return sink
    return SqliteSink(directory, remainder=0, divisor=1)


def measure(variant: str, rate: int, *, entities: int, seconds: float, period: float, seed: int) -> dict[str, Any]:
    """Commit times (ms) of ``seconds`` of ``rate`` changes/s into a shard file of ``entities`` orders."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix=f"bench-commits-{variant}-") as directory:
        # Loaded and closed first (the close copies the WAL into the file and removes it): both
        # variants start the measured stream from the same file and an empty WAL.
        with SqliteSink(directory, remainder=0, divisor=1, checkpoints=None) as loader:
            loader.write([Change("snapshot", "order", "Created", 6_000_001 + n, order(n, "Working"), AT, 1)
                          for n in range(entities)])
        sink = open_sink(directory, variant)
        try:
            per_batch = max(1, round(rate * period))
            times: list[float] = []
            wal_peak = 0
            statuses = ("Working", "Filled", "Canceled")
            started = time.perf_counter()
            tick = started
            while tick - started < seconds:
                tick += period
                delay = tick - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                batch = []
                for _ in range(per_batch):
                    n = rng.randrange(entities)
                    batch.append(Change("live", "order", "Updated", 6_000_001 + n,
                                        order(n, statuses[rng.randrange(3)]), AT, 1))
                began = time.perf_counter()
                sink.write(batch)
                times.append((time.perf_counter() - began) * 1000)
                wal_peak = max(wal_peak, os.stat(sink.file + "-wal").st_size)
            elapsed = time.perf_counter() - started
            stats = sink.checkpointer.stats if sink.checkpointer is not None else None
            # Each start over of the WAL is an fsync of its header by the committing thread (synchronous=NORMAL).
            restarts = wal_restarts(sink.file)
        finally:
            sink.close()
    return {"variant": variant, "rate": rate, "commits": len(times), "changes_s": len(times) * per_batch / elapsed,
            "p50_ms": percentile(times, 0.5), "p99_ms": percentile(times, 0.99),
            "p999_ms": percentile(times, 0.999), "max_ms": max(times), "wal_peak_mib": wal_peak / 1048576,
            "restarts": restarts,
            "checkpoints": None if stats is None else dataclasses.asdict(stats)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1000,5000", help="changes/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per variant and rate")
    parser.add_argument("--entities", type=int, default=100_000, help="orders in the shard file")
    parser.add_argument("--period", type=float, default=0.005, help="seconds between commits")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--label", default="", help="a word for the results file name")
    args = parser.parse_args()
    machine = info()
    runs = []
    for repeat in range(args.repeat):
        for rate in (int(r) for r in args.rates.split(",")):
            for variant in READERS:
                runs.append({"repeat": repeat, **measure(variant, rate, entities=args.entities,
                                                         seconds=args.seconds, period=args.period,
                                                         seed=repeat * 1000 + rate)})
    machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"sqlite commit times, {args.entities:,} orders, a commit every {args.period * 1000:g} ms "
          f"({header(machine)}), {args.seconds:g} s per run, medians of {args.repeat}:")
    print("| changes/s | checkpoints | commits | p50 ms | p99 ms | p99.9 ms | max ms | p99 / reference "
          "| max / reference | WAL peak MiB | commits that fsync |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    table = []
    for rate in dict.fromkeys(r["rate"] for r in runs):
        rows = {v: [r for r in runs if r["rate"] == rate and r["variant"] == v] for v in READERS}
        medians = {v: {k: statistics.median(r[k] for r in mine) for k in
                       ("commits", "p50_ms", "p99_ms", "p999_ms", "max_ms", "wal_peak_mib", "restarts")}
                   for v, mine in rows.items()}
        ref = medians["autocheckpoint"]
        for variant, row in medians.items():
            table.append({"rate": rate, "variant": variant, **row})
            print(f"| {rate:,} | {variant} | {row['commits']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
                  f"| {row['p999_ms']:.2f} | {row['max_ms']:.1f} | {row['p99_ms'] / ref['p99_ms']:.2f} "
                  f"| {row['max_ms'] / ref['max_ms']:.2f} | {row['wal_peak_mib']:.1f} | {row['restarts']:,.0f} |")
    payload = {"seconds": args.seconds, "entities": args.entities, "period": args.period, "table": table,
               "runs": runs}
    print(f"results: {save('commits', machine, payload, args.label)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
