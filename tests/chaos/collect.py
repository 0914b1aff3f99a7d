"""Reads what the oracle judges: shard files, the change logs, /status, the simulator's records, the logs."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import urllib.error
from pathlib import Path
from typing import Any

from harness import children, proc_state

from .oracle import Key, Observed, Row, epoch
from .world import World


def change_log(path: Path) -> list[Row]:
    """The change log of one sqlite shard file, in order ([] if there is none yet)."""
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT seq, received_at, origin, entity_type, event_type, id, "
                            "CASE origin WHEN 'rejected' THEN data END FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [Row(int(seq), epoch(at), origin, entity_type, event_type, ident if isinstance(ident, int) else None,
                _refused_id(data))
            for seq, at, origin, entity_type, event_type, ident, data in rows]


def history_log(path: Path) -> list[Row]:
    """The change log of a shard across its files: every generation a removal retired (``retired/``,
    ``retired/N/``) first, then the current file.  A shard removed and re-added starts a new file, and what
    its earlier workers wrote (a quarantined entity, a deletion) is judged all the same."""
    retired = sorted(path.parent.glob(f"retired/**/{path.name}"), key=lambda p: p.stat().st_mtime)
    return [row for generation in (*retired, path) for row in change_log(generation)]


def _refused_id(data: str | bytes | None) -> object:
    """The id a rejected row's record names (its entity's, or its kept scalar fields')."""
    if data is None:
        return None
    # json, not orjson: an id past 64 bits (a poison) must come back as the number it was.
    record = json.loads(data)
    kept = record.get("entity") if isinstance(record.get("entity"), dict) else record.get("fields")
    return kept.get("id") if isinstance(kept, dict) else None


def sink_state(path: Path) -> str | None:
    """``shard_status.state`` of one sqlite shard file (None: no file, table or row)."""
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT state FROM shard_status").fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return None if row is None else str(row[0])


def status_or_empty(world: World) -> dict[int, dict[str, Any]]:
    with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, AssertionError):
        return world.d.shards()
    return {}


def zombies(pid: int) -> list[int]:
    return [child for child in children(pid) if proc_state(child) == "Z"]


def sinks(world: World) -> dict[int, dict[Key, Any]]:
    return {r: world.d.sink_entities(r) for r in world.remainders}


def truths(world: World) -> dict[int, dict[Key, Any]]:
    return {r: world.d.truth(r) for r in world.remainders}


def observe(world: World, *, began: float, quiesced: float, converged: bool, zombie_pids: list[int]) -> Observed:
    """Everything the checks need, read now."""
    daemon, sim = world.d, world.sim
    stats = sim.stats()
    return Observed(
        remainders=list(world.remainders),
        sinks=sinks(world),
        truths=truths(world),
        changes={r: history_log(daemon.db_path(r)) for r in world.remainders},
        sink_states={r: sink_state(daemon.db_path(r)) for r in world.remainders},
        status=status_or_empty(world),
        history={key: list(spans) for key, spans in sim.history().items()},
        subscriptions=sim.subscriptions(),
        logs=daemon.logs(),
        logins=int(stats["logins"]),
        renewals=int(stats["renewals"]),
        peak_handshakes=int(stats["peak_handshakes"]),
        began=began,
        quiesced=quiesced,
        converged=converged,
        zombies=zombie_pids,
    )
