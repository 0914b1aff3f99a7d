"""The lines ``shardsync follow`` writes: one JSON object per line, a change or a notice.

A change line (it has ``seq``; never ``notice``)::

    {"shard": 3, "divisor": 16, "seq": 1234, "origin": "live", "entityType": "position",
     "eventType": "Updated", "id": 55, "accountId": 7, "receivedAt": "2024-05-01T12:00:00.000Z",
     "entity": {...}}

``(divisor, shard, seq)`` identifies a change: ``seq`` is the shard's own
counter (sqlite ``events.seq``, PostgreSQL ``events.shard_seq``, jsonl
``seq``), gap-free and in commit order.  ``origin`` is snapshot, resync,
live, system or rejected; for system events ``entityType`` is the event
name, ``eventType`` is ``Event`` and ``id`` is null.  ``accountId`` is null
when unknown.

A notice line (it has ``notice``; never ``seq``), written only with
``--status-lines``::

    {"notice": "status", "shard": 3, "divisor": 16, "state": "resyncing", "stale": false,
     "snapshotAt": ..., "lastEventAt": ..., "lastCommitAt": ..., "session": "..."}
    {"notice": "gap", "shard": 3, "divisor": 16, "after": 120, "next": 5000}

``status`` is written when a shard is first seen not live and whenever its
state (or staleness: live but no frame for ``--stale-after`` seconds)
changes; ``state`` is a ``shard_status`` state or ``unknown`` (no status row
yet).  ``gap``: changes ``after+1 .. next-1`` were pruned by retention before
they could be read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from shardsync.sinks.base import Freshness

_NEWLINE = orjson.OPT_APPEND_NEWLINE


@dataclass(frozen=True, slots=True)
class Record:
    """One committed change as a source read it; ``entity`` is parsed JSON or an ``orjson.Fragment``."""

    seq: int
    origin: str
    entity_type: str
    event_type: str
    id: int | None
    account_id: int | None
    received_at: str
    entity: Any


def change_line(remainder: int, divisor: int, record: Record) -> bytes:
    return orjson.dumps(
        {
            "shard": remainder,
            "divisor": divisor,
            "seq": record.seq,
            "origin": record.origin,
            "entityType": record.entity_type,
            "eventType": record.event_type,
            "id": record.id,
            "accountId": record.account_id,
            "receivedAt": record.received_at,
            "entity": record.entity,
        },
        option=_NEWLINE,
    )


def status_line(remainder: int, divisor: int, state: str, stale: bool, row: Freshness | None) -> bytes:
    return orjson.dumps(
        {
            "notice": "status",
            "shard": remainder,
            "divisor": divisor,
            "state": state,
            "stale": stale,
            "snapshotAt": row.snapshot_at if row else None,
            "lastEventAt": row.last_event_at if row else None,
            "lastCommitAt": row.last_commit_at if row else None,
            "session": row.session if row else None,
        },
        option=_NEWLINE,
    )


def gap_line(remainder: int, divisor: int, after: int, next_seq: int) -> bytes:
    return orjson.dumps(
        {"notice": "gap", "shard": remainder, "divisor": divisor, "after": after, "next": next_seq}, option=_NEWLINE
    )
