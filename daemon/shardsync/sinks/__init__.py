"""Where a shard's changes are persisted: sqlite (default), jsonl or postgres.

Adding a sink kind is one :data:`KINDS` entry plus its module (a Sink class
and a module-level ``retire(where, *, remainder, divisor)``): the config
validates ``[sink] kind`` and the key it needs against this table, and
:func:`open_sink` imports the module only when the kind is chosen (psycopg is
an optional extra, and a worker loads only its own sink).

Modules: ``base`` (the Sink contract, Freshness/SinkState, batch rows), ``sqlite`` with
``sqlite_schema``, ``sqlite_checkpoint`` (WAL checkpoints off the commit path), ``sqlite_gate`` (the
writer/checkpointer lock) and ``sqlite_wal`` (the WAL's length and restarts read from its files), ``jsonl``
with ``jsonl_files`` (segments, rotation) and ``jsonl_upgrade``,
``postgres`` and ``postgres_schema`` (per-shard seq, NOTIFY), ``attribution`` (account ids of
older rows at upgrade), ``retired`` (moving a no-longer-owned shard's files aside).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

from shardsync.sinks.base import (
    DEFAULT_RETENTION,
    Freshness,
    Sink,
    SinkError,
    SinkState,
    SinkUnavailable,
    shard_file_name,
)

__all__ = [
    "DEFAULT_RETENTION",
    "KINDS",
    "Freshness",
    "Sink",
    "SinkError",
    "SinkKind",
    "SinkState",
    "SinkUnavailable",
    "open_sink",
    "retire",
    "shard_file_name",
]


@dataclass(frozen=True, slots=True)
class SinkKind:
    """One sink kind: its class, and which ``[sink]`` key says where it writes."""

    module: str
    cls: str
    target: Literal["path", "dsn"]


KINDS: dict[str, SinkKind] = {
    "sqlite": SinkKind("shardsync.sinks.sqlite", "SqliteSink", "path"),
    "jsonl": SinkKind("shardsync.sinks.jsonl", "JsonlSink", "path"),
    "postgres": SinkKind("shardsync.sinks.postgres", "PostgresSink", "dsn"),
}


def _kind(kind: str) -> SinkKind:
    entry = KINDS.get(kind)
    if entry is None:
        raise SinkError(f"unknown sink kind {kind!r}; expected one of {', '.join(KINDS)}")
    return entry


def open_sink(kind: str, *, path: str = "", dsn: str = "", remainder: int, divisor: int) -> Sink:
    """Open shard ``remainder``/``divisor``'s sink of ``kind``, taking its single-writer lock."""
    entry = _kind(kind)
    cls: type[Sink] = getattr(importlib.import_module(entry.module), entry.cls)
    where = path if entry.target == "path" else dsn
    return cls(where, remainder=remainder, divisor=divisor)  # type: ignore[call-arg]


def retire(kind: str, *, path: str = "", dsn: str = "", remainder: int, divisor: int, replaced: bool = False) -> None:
    """Mark a no-longer-owned shard ``retired``; sqlite/jsonl also move its files to ``<path>/retired/``.

    Takes the shard's writer lock (SinkError while a worker still writes it).
    A file shard that has no file is left alone; PostgreSQL always gets (or
    keeps) a status row saying ``retired``; its ``entities`` rows go in the
    same transaction when it was ``replaced`` (a resharding whose new shards
    are live and committed), else they stay.  The change log stays either way
    (followers drain it; retention prunes it).
    """
    entry = _kind(kind)
    where = path if entry.target == "path" else dsn
    module = importlib.import_module(entry.module)
    if entry.target == "path":
        module.retire(where, remainder=remainder, divisor=divisor)
    else:
        module.retire(where, remainder=remainder, divisor=divisor, replaced=replaced)
