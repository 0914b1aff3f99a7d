"""How one worker scales from 1k to 1M entities per shard: snapshot -> live, peak RSS, per-entity cost, resyncs.

For each size a simulator process is grown to that many entities (the
``grow`` knob: working orders with their version, command and report, on up
to 200 accounts), and a real worker (``run_in_process`` in a forked child,
sqlite sink, every entity type) takes three snapshots of it:

* **first**: a fresh state directory; ``start`` is fork -> live, ``sync`` the
  worker's own syncrequest -> live (its heartbeat's ``snapshot_seconds``),
  ``sim`` the simulator's part of that (syncrequest -> last part framed: it
  selects, chunks and encodes the snapshot meanwhile), ``peak`` the worker's
  VmHWM, ``cpu`` its CPU seconds (all threads);
* **resync, same worker**: upgrades refused, the socket dropped, 1 % of the
  shard changed (0.8 % orders flipped, 0.1 % command reports deleted, 0.1 %
  new entities), upgrades allowed again; VmHWM reset before (clear_refs), so
  ``peak`` is this resync's, and ``growth`` is that peak over the RSS at live;
* **resync after SIGKILL**: the worker killed, 1 % changed again, a new worker
  on the same directory (it preloads the sink, then resyncs).

After each, the sink's ``entities`` row count is checked against the
simulator's truth.  The reference, measured in the same run, is SQLite's own
ceiling for N rows of this shape (``bench/ceiling.py``): ``x ceil`` is the
first sync's seconds over it.  Snapshots are split into parts of 10,000
entities with an end marker (so no quiet period is waited out).

    .venv/bin/python bench/scale.py [--sizes 1000,10000,100000,1000000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceiling import measure as ceiling
from forked import ForkedWorker, SimProcess, quiet_logs
from machine import header, info, save
from shardsync.simulator.truth import ENTITY_TYPES

PART = 10_000
LIVE_TIMEOUT = 900.0


def sim_for(size: int) -> tuple[SimProcess, int]:
    """A simulator holding about ``size`` entities in shard 0/1; returns it and its exact entity count."""
    accounts = max(5, min(200, size // 100))
    sim = SimProcess("--accounts", str(accounts), "--users", str(max(1, accounts // 10)), "--snapshot-mode", "split",
                     "--split-chunks", str(max(1, size // PART)), "--split-end", "empty")
    base = sim.admin("stats")["entities"]
    if size > base:
        sim.admin("grow", {"orders": (size - base) // 4})
    return sim, int(sim.admin("stats")["entities"])


def rows_in(state: Path) -> int:
    conn = sqlite3.connect(f"file:{state / 'shard-000-of-001.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("SELECT count(*) FROM entities").fetchone()[0])
    finally:
        conn.close()


def churn(sim: SimProcess, size: int) -> None:
    """Change 1 % of the shard: 0.8 % updates, 0.1 % deletions, 0.1 % creations (4 entities per order)."""
    sim.admin("churn", {"updates": max(1, size * 8 // 1000), "deletions": max(1, size // 1000),
                        "creations": max(1, size // 4000)})


def snapshot_share(sim: SimProcess) -> float:
    """Seconds from the last syncrequest to its last part being framed, at the simulator."""
    record = sim.admin("stats")["subscriptions"][-1]
    return float(record["snapshot_sent_at"] - record["synced_at"])


def figures(worker: ForkedWorker, sim: SimProcess, began: float, cpu_before: float) -> dict[str, float]:
    beat = worker.last
    assert beat is not None and beat.snapshot_seconds is not None
    return {"start_s": time.perf_counter() - began, "sync_s": beat.snapshot_seconds, "sim_s": snapshot_share(sim),
            "peak_mib": worker.status("VmHWM") / 1024, "rss_mib": worker.status("VmRSS") / 1024,
            "cpu_s": worker.cpu_seconds() - cpu_before}


def one_size(size: int) -> dict[str, Any]:
    sim, entities = sim_for(size)
    state = Path(tempfile.mkdtemp(prefix=f"bench-scale-{size}-"))
    options: dict[str, Any] = {"kind": "sqlite", "path": str(state), "entity_types": ENTITY_TYPES,
                               "backoff_initial": 0.05, "backoff_max": 0.2}
    result: dict[str, Any] = {"size": size, "entities": entities}
    try:
        worker = ForkedWorker(sim, **options)
        began = worker.started
        worker.wait(lambda b: b.state == "live", LIVE_TIMEOUT, "live")
        result["first"] = figures(worker, sim, began, 0.0)
        assert rows_in(state) == entities, (rows_in(state), entities)

        # Resync on the same worker: the changes happen while it cannot connect.
        live_rss = worker.status("VmRSS")
        worker.reset_peak()
        reconnects = worker.last.reconnects if worker.last else 0
        sim.admin("refuse", {"seconds": 3600})
        sim.admin("drop", {})
        worker.wait(lambda b: b.state != "live", 60, "a lost connection")
        churn(sim, size)
        entities = int(sim.admin("stats")["entities"])
        cpu = worker.cpu_seconds()
        sim.admin("refuse", {"seconds": 0})
        began = time.perf_counter()
        worker.wait(lambda b: b.state == "live" and b.reconnects > reconnects, LIVE_TIMEOUT, "live again")
        result["resync"] = figures(worker, sim, began, cpu)
        result["resync"]["growth_mib"] = result["resync"]["peak_mib"] - live_rss / 1024
        assert rows_in(state) == entities, (rows_in(state), entities)

        worker.kill()
        churn(sim, size)
        entities = int(sim.admin("stats")["entities"])
        worker = ForkedWorker(sim, **options)
        worker.wait(lambda b: b.state == "live", LIVE_TIMEOUT, "live after SIGKILL")
        result["killed"] = figures(worker, sim, worker.started, 0.0)
        assert rows_in(state) == entities, (rows_in(state), entities)
        worker.stop()
    finally:
        sim.close()
        shutil.rmtree(state, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as directory:
        result["ceiling"] = ceiling(entities, directory)
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Figure by figure, the median over repeats."""
    out: dict[str, Any] = {"size": runs[0]["size"], "entities": runs[0]["entities"]}
    for phase in ("first", "resync", "killed", "ceiling"):
        out[phase] = {k: statistics.median(r[phase][k] for r in runs) for k in runs[0][phase]}
    return out


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| entities | first: sync s (start s) | sim s | x ceil | us/entity | peak MiB | B/entity "
             "| resync same: sync s | peak MiB (growth) | after SIGKILL: sync s (start s) | peak MiB | ceiling s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        first, resync, killed, ceil = r["first"], r["resync"], r["killed"], r["ceiling"]
        n = r["entities"]
        lines.append(
            f"| {n:,} | {first['sync_s']:.2f} ({first['start_s']:.2f}) | {first['sim_s']:.2f} "
            f"| {first['sync_s'] / ceil['first_seconds']:.1f} | {first['sync_s'] / n * 1e6:.1f} "
            f"| {first['peak_mib']:,.0f} | {first['peak_mib'] * 1048576 / n:,.0f} "
            f"| {resync['sync_s']:.2f} | {resync['peak_mib']:,.0f} ({resync['growth_mib']:+,.0f}) "
            f"| {killed['sync_s']:.2f} ({killed['start_s']:.2f}) | {killed['peak_mib']:,.0f} "
            f"| {ceil['first_seconds']:.2f} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--label", default="", help="a word for the results file name (before, after)")
    args = parser.parse_args()
    quiet_logs()
    machine = info()
    runs: dict[int, list[dict[str, Any]]] = {}
    for _ in range(args.repeat):
        for size in (int(s) for s in args.sizes.split(",")):
            runs.setdefault(size, []).append(one_size(size))
    results = [median_of(r) for r in runs.values()]
    machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"scale, sqlite sink, medians of {args.repeat} ({header(machine)}):")
    print("\n".join(table(results)))
    print(f"results: {save('scale', machine, {'repeat': args.repeat, 'results': results, 'runs': runs}, args.label)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
