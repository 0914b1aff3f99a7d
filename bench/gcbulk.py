"""The collector around a bulk snapshot, in isolation: parse + diff + commit N entities, then a live stream.

Three ways, each in its own process: ``on`` (the collector as Python leaves it), ``off`` (disabled for the
bulk step, enabled after) and ``freeze`` (the worker's own ``worker/gcpause.SnapshotGc``: a full collection
before every 16th bulk step, here the first, disabled for it, everything frozen and enabled after). Each takes
a first snapshot, 300,000 live updates, a resync of the same snapshot and 300,000 more updates, and prints the
bulk seconds and the slowest single live update (a collection that walks the bulk step's objects shows there).

    .venv/bin/python bench/gcbulk.py [--entities 500000]
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time

import orjson

from shardsync.mirror import Mirror
from shardsync.worker.gcpause import SnapshotGc

PART = 10_000
LIVE = 300_000


def parts(count: int) -> list[bytes]:
    entities = [{"id": i, "accountId": i % 997, "name": f"order{i}", "status": "Working", "qty": i % 7,
                 "price": 4123.25 + i, "tags": {"a": 1, "b": [1, 2, 3]}, "timestamp": "2024-05-01T12:00:00.000Z"}
                for i in range(count)]
    return [orjson.dumps({"d": {"orders": entities[k:k + PART]}}) for k in range(0, count, PART)]


def run(mode: str, count: int) -> str:
    chunks = parts(count)
    mirror = Mirror()
    collector = SnapshotGc()

    def bulk() -> float:
        started = time.perf_counter()
        if mode == "freeze":
            collector.pause()
        elif mode == "off":
            gc.disable()
        snapshot = {}
        for chunk in chunks:
            for entity in orjson.loads(chunk)["d"]["orders"]:
                snapshot[("order", entity["id"])] = entity
        mirror.diff_snapshot(snapshot, types=None, received_at="t")
        mirror.commit()
        del snapshot
        if mode == "freeze":
            collector.resume()
        else:
            gc.enable()
        return time.perf_counter() - started

    def live() -> float:
        worst = 0.0
        for n in range(LIVE):
            started = time.perf_counter()
            entity = orjson.loads(orjson.dumps({"id": n % count, "accountId": 1, "qty": n, "tags": {"a": [n]}}))
            mirror.diff_props("order", "Updated", (entity,), received_at="t")
            if n % 100 == 0:
                mirror.commit()
            worst = max(worst, time.perf_counter() - started)
        return worst

    first, live1, resync, live2 = bulk(), live(), bulk(), live()
    return (f"| {mode} | {first:.2f} | {resync:.2f} | {live1 * 1000:.1f} | {live2 * 1000:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=500_000)
    parser.add_argument("--mode", choices=("on", "off", "freeze"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(run(args.mode, args.entities))
        return 0
    print(f"{args.entities:,} entities, {LIVE:,} live updates after each bulk step")
    print("| collector | first s | resync s | slowest live update after first, ms | after resync, ms |")
    print("|---|---|---|---|---|")
    for mode in ("on", "off", "freeze"):
        done = subprocess.run([sys.executable, __file__, "--entities", str(args.entities), "--mode", mode],
                              capture_output=True, text=True, check=True)
        print(done.stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
