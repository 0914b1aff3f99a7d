"""Reads a shard's SQLite file the way an operator would (read-only), for tests and benches."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson


def read_sqlite(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The entities table of one shard file as {(entity_type, id): entity}."""
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT entity_type, id, data FROM entities").fetchall()
    finally:
        conn.close()
    return {(t, i): orjson.loads(d) for t, i, d in rows}


def read_events(path: Path) -> list[tuple[str, str, str, int | None]]:
    """The change log (origin, entity_type, event_type, id) of one shard file, in order."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT origin, entity_type, event_type, id FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [(o, t, e, i) for o, t, e, i in rows]
