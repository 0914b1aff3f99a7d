"""SQLite's own ceiling for the shard schema: N rows of the snapshot's shape written in one transaction.

What no sink can beat on this machine: the schema of a new shard file
(``sqlite_schema.CREATE``), the pragmas of the reference (WAL, synchronous
NORMAL, automatic checkpoints every 4096 pages, as the sink had them when
issue 16 was filed), rows serialised beforehand, one ``BEGIN IMMEDIATE``, one
prepared ``INSERT`` per table through ``executemany``, one ``COMMIT``: each
entity written once into ``entities`` and once into ``events`` (the change
log), as a first snapshot must.  ``resync`` does the same for a 1 % change of
a loaded file (upserts and log rows).

    .venv/bin/python bench/ceiling.py [--rows 1000,10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import header, info, save
from shardsync.sinks import sqlite_schema

#: The reference pragmas (the sink's at the time of issue 16).
REFERENCE_PRAGMAS = ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL", "PRAGMA wal_autocheckpoint = 4096")
AT = "2026-01-01T00:00:00.000Z"
ENTITY_UPSERT = (
    "INSERT INTO entities (entity_type, id, account_id, data, updated_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (entity_type, id) DO UPDATE SET "
    "account_id = excluded.account_id, data = excluded.data, updated_at = excluded.updated_at"
)
EVENT_INSERT = (
    "INSERT INTO events (received_at, origin, entity_type, event_type, id, account_id, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def open_reference(path: str) -> sqlite3.Connection:
    """A new shard file with the schema and the reference pragmas, in autocommit mode."""
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in REFERENCE_PRAGMAS:
        conn.execute(pragma)
    sqlite_schema.prepare(conn, path)
    return conn


def rows(count: int, start: int = 0, status: str = "Working") -> list[tuple[str, int, int, str, str]]:
    """``count`` entity rows shaped like the scale bench's orders (~170 bytes of JSON each)."""
    out = []
    for n in range(start, start + count):
        entity = {"id": 6_000_001 + n, "accountId": 4_000_001 + n % 200, "contractId": 13_000_001,
                  "timestamp": AT, "action": "Buy" if n % 2 else "Sell", "ordStatus": status, "admin": False,
                  "executionProviderId": 1}
        out.append(("order", entity["id"], entity["accountId"], orjson.dumps(entity).decode(), AT))
    return out


def write(conn: sqlite3.Connection, entity_rows: list[tuple[str, int, int, str, str]], origin: str) -> float:
    """One transaction writing every row to both tables; returns its seconds."""
    events = [(AT, origin, t, "Created", i, a, d) for t, i, a, d, _ in entity_rows]
    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(ENTITY_UPSERT, entity_rows)
    conn.executemany(EVENT_INSERT, events)
    conn.execute("COMMIT")
    return time.perf_counter() - started


def measure(count: int, directory: str) -> dict[str, float]:
    """Seconds of a first load of ``count`` rows and of a 1 % resync on top of it."""
    path = os.path.join(directory, f"ceiling-{count}.sqlite3")
    conn = open_reference(path)
    try:
        first = write(conn, rows(count), "snapshot")
        changed = max(1, count // 100)
        resync = write(conn, rows(changed, start=count // 2, status="Canceled"), "resync")
    finally:
        conn.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    return {"rows": count, "first_seconds": first, "first_us_per_row": first / count * 1e6,
            "resync_rows": changed, "resync_seconds": resync}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000,10000,100000,1000000")
    parser.add_argument("--label", default="", help="a word for the results file name")
    args = parser.parse_args()
    machine = info()
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as directory:
        results = [measure(int(n), directory) for n in args.rows.split(",")]
    print(f"sqlite ceiling ({header(machine)}):")
    print("      rows   first load s   us/row   1% resync s")
    for r in results:
        print(f"  {r['rows']:>8,}   {r['first_seconds']:>10.3f}   {r['first_us_per_row']:>6.2f}   "
              f"{r['resync_seconds']:>10.4f}")
    print(f"results: {save('ceiling', machine, {'results': results}, args.label)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
