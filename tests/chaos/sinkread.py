"""Reads a shard's committed state and change log from any sink the way a consumer would, and its crash state.

A reader never takes the worker's writer lock: sqlite through a read-only
connection, jsonl by reading complete lines, PostgreSQL with plain SELECTs.
The change log comes back as ``{seq: row}`` so "nothing committed is lost"
is a subset check.
"""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path
from typing import Any

import orjson

Key = tuple[str, int]
LOG_ONLY = frozenset({"system", "rejected"})


def jsonl_path(state: Path, remainder: int, divisor: int) -> Path:
    return state / f"shard-{remainder:03d}-of-{divisor:03d}.jsonl"


def sqlite_path(state: Path, remainder: int, divisor: int) -> Path:
    return state / f"shard-{remainder:03d}-of-{divisor:03d}.sqlite3"


# --- sqlite --------------------------------------------------------------------------------------


def sqlite_log(path: Path) -> dict[int, tuple[Any, ...]]:
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT seq, origin, entity_type, event_type, id, data FROM events").fetchall()
    finally:
        conn.close()
    return {int(row[0]): tuple(row[1:]) for row in rows}


def integrity(path: Path) -> str:
    """``PRAGMA integrity_check`` of a sqlite file ("ok" when sound)."""
    conn = sqlite3.connect(str(path), timeout=10)
    try:
        return "; ".join(str(row[0]) for row in conn.execute("PRAGMA integrity_check").fetchall())
    finally:
        conn.close()


def wal_uncommitted_frames(path: Path) -> int:
    """Frames of the current WAL generation written after its last commit frame: a transaction in flight.

    The WAL format (sqlite.org/walformat.html): a 32-byte header with the salts, then frames of a 24-byte
    header (page number, database size after commit -- non-zero only on a commit frame --, the salts)
    and one page.  Frames whose salts differ from the header's are left over from an earlier generation.
    """
    wal = Path(f"{path}-wal")
    if not wal.exists() or wal.stat().st_size < 32:
        return 0
    data = wal.read_bytes()
    page_size = struct.unpack(">I", data[8:12])[0]
    salts = data[16:24]
    frame = 24 + page_size
    since_commit = 0
    for offset in range(32, len(data) - frame + 1, frame):
        if data[offset + 8:offset + 16] != salts:
            break
        commit_size = struct.unpack(">I", data[offset + 4:offset + 8])[0]
        since_commit = 0 if commit_size else since_commit + 1
    return since_commit


# --- jsonl ---------------------------------------------------------------------------------------


def jsonl_lines(path: Path) -> tuple[dict[int, dict[str, Any]], bool]:
    """The complete lines by seq, and whether the file ends in a torn (incomplete) line."""
    if not path.exists():
        return {}, False
    data = path.read_bytes()
    torn = bool(data) and not data.endswith(b"\n")
    complete = data[: data.rfind(b"\n") + 1]
    lines = {}
    for raw in complete.splitlines():
        line = orjson.loads(raw)
        lines[int(line["seq"])] = line
    return lines, torn


def jsonl_state(path: Path) -> dict[Key, Any]:
    """Replay the complete lines into current state (upserts and deletes; log-only origins skipped)."""
    state: dict[Key, Any] = {}
    lines, _ = jsonl_lines(path)
    for _, line in sorted(lines.items()):
        if line["origin"] in LOG_ONLY:
            continue
        key = (line["entityType"], int(line["entity"]["id"]))
        if line["eventType"] == "Deleted":
            state.pop(key, None)
        else:
            state[key] = line["entity"]
    return state


# --- PostgreSQL ------------------------------------------------------------------------------------


def pg_log(dsn: str, remainder: int, divisor: int) -> dict[int, tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT shard_seq, origin, entity_type, event_type, id, data FROM events "
                            "WHERE divisor = %s AND shard = %s", (divisor, remainder)).fetchall()
    return {int(row[0]): tuple(row[1:]) for row in rows}


def pg_state(dsn: str, remainder: int, divisor: int) -> dict[Key, Any]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT entity_type, id, data FROM entities WHERE divisor = %s AND shard = %s",
                            (divisor, remainder)).fetchall()
    return {(t, int(i)): d for t, i, d in rows}


def pg_in_transaction(dsn: str) -> int:
    """Backends of other clients inside a transaction right now (a batch in flight)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                           "AND datname = current_database() AND xact_start IS NOT NULL").fetchone()
    return int(row[0]) if row else 0
