"""Where a shard's changes are persisted: sqlite (default), jsonl or postgres."""

from __future__ import annotations

from shardsync.sinks.base import Sink, SinkError, shard_file_name
from shardsync.sinks.jsonl import JsonlSink
from shardsync.sinks.sqlite import SqliteSink

__all__ = ["KINDS", "Sink", "SinkError", "open_sink", "shard_file_name"]

KINDS = ("sqlite", "jsonl", "postgres")


def open_sink(kind: str, *, path: str = "", dsn: str = "", remainder: int, divisor: int) -> Sink:
    """Open shard ``remainder``/``divisor``'s sink of ``kind``, taking its single-writer lock."""
    if kind == "sqlite":
        return SqliteSink(path, remainder=remainder, divisor=divisor)
    if kind == "jsonl":
        return JsonlSink(path, remainder=remainder, divisor=divisor)
    if kind == "postgres":
        # Imported only when chosen: psycopg is an optional extra.
        from shardsync.sinks.postgres import PostgresSink

        return PostgresSink(dsn, remainder=remainder, divisor=divisor)
    raise SinkError(f"unknown sink kind {kind!r}; expected one of {', '.join(KINDS)}")
