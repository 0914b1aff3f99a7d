"""The collector reads a shard's whole change log: the generations its removals retired and the current file."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from .collect import history_log

NAME = "shard-003-of-004.sqlite3"


def shard_file(path: Path, rows: list[tuple[int, str, str, str | None]], mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, received_at TEXT, origin TEXT, entity_type TEXT, "
                 "event_type TEXT, id INTEGER, data TEXT)")
    conn.executemany("INSERT INTO events VALUES (?, '2026-12-01T00:00:00.000Z', ?, 'order', ?, NULL, ?)", rows)
    conn.commit()
    conn.close()
    os.utime(path, (mtime, mtime))


def test_history_log_reads_retired_generations_first_then_the_current_file(tmp_path: Path) -> None:
    """A rejected row written before the shard was removed and re-added is still found (ids past 64 bits kept)."""
    state = tmp_path / "state"
    shard_file(state / "retired" / NAME, [(1, "snapshot", "Created", None)], 1000.0)
    shard_file(state / "retired" / "1" / NAME,
               [(1, "rejected", "Created", '{"reason": "r", "entity": {"id": 9223372036854775808}}')], 2000.0)
    shard_file(state / NAME, [(1, "live", "Deleted", None)], 3000.0)
    rows = history_log(state / NAME)
    assert [(r.origin, r.refused_id) for r in rows] == [("snapshot", None), ("rejected", 2**63), ("live", None)]
    assert history_log(tmp_path / "nowhere" / NAME) == []
