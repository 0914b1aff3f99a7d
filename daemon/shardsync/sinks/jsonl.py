"""The append-only sink: one JSON line per change, ``<path>/shard-RRR-of-DDD.jsonl``.

Each batch is one buffer appended with ``write()`` and made durable with
``fdatasync`` before ``write()`` returns, so an acknowledged change survives
power loss too. If the batch fails in-process (ENOSPC, EIO, a bad entity) the
file is cut back to where the batch began: all or nothing. A crash of the
process in the middle of the append can leave a prefix of that unacknowledged
batch and a torn last line; opening the file cuts the torn line off (see
``recovered_bytes``) and the complete lines stay — they are changes the server
really sent, and the worker's resync after restart converges the state anyway.

The file is the only state: ``load()`` replays it from the start, so start-up
cost grows with the log. Use sqlite when the log gets long.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from shardsync.change import DELETE_EVENT, EVENT_TYPES, UPSERT_EVENTS, Change
from shardsync.sinks.base import (
    Sink,
    SinkError,
    dump_error,
    ensure_dir,
    lock_exclusive,
    open_file,
    shard_file_name,
)

#: The keys of every line, in order; a public contract.
KEYS = ("origin", "entityType", "eventType", "entity", "receivedAt")

_KEY_SET = frozenset(KEYS)
_dumps = orjson.dumps
_NEWLINE = orjson.OPT_APPEND_NEWLINE
_TAIL_CHUNK = 64 * 1024


class JsonlSink(Sink):
    """An flock'd, append-only JSON-lines change log that replays into current state."""

    def __init__(self, path: str, *, remainder: int, divisor: int) -> None:
        self.file = os.path.join(path, shard_file_name(remainder, divisor, "jsonl"))
        #: Bytes of a torn or unparseable last line cut off since opening.
        self.recovered_bytes = 0
        ensure_dir("jsonl", path)
        self._fd: int | None = open_file("jsonl", self.file, os.O_RDWR | os.O_APPEND)
        self._broken = False
        try:
            lock_exclusive("jsonl", self._fd, self.file)
            # Trimmed at open, not only in load(): a write() appended after a
            # torn line would glue two changes into one corrupt line.
            self._trim_torn_tail(self._fd)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"JsonlSink({self.file!r})"

    def _descriptor(self) -> int:
        if self._fd is None:
            raise SinkError(f"jsonl sink: {self.file} is closed")
        if self._broken:
            raise SinkError(
                f"jsonl sink: {self.file} may hold a partial batch that could not be removed; reopen the sink"
            )
        return self._fd

    def _trim_torn_tail(self, fd: int) -> None:
        try:
            size = os.fstat(fd).st_size
            end = size
            while end > 0:
                start = max(0, end - _TAIL_CHUNK)
                chunk = os.pread(fd, end - start, start)
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                end = start
            else:
                keep = 0
            if keep < size:
                self._truncate(fd, keep)
                self.recovered_bytes += size - keep
        except OSError as exc:
            raise SinkError(f"jsonl sink: cannot recover {self.file}: {exc.strerror}") from exc

    @staticmethod
    def _truncate(fd: int, size: int) -> None:
        os.ftruncate(fd, size)
        os.fdatasync(fd)

    def load(self) -> Iterator[tuple[str, int, dict[str, Any]]]:
        fd = self._descriptor()
        state: dict[tuple[str, int], dict[str, Any]] = {}
        offset = 0
        last_start = 0
        bad: tuple[int, int, str] | None = None  # (line number, offset, reason)
        try:
            with open(self.file, "rb") as stream:
                for number, line in enumerate(stream, 1):
                    if bad is not None:
                        # Only the last line may be damaged; earlier damage is
                        # corruption and must not be papered over.
                        raise SinkError(f"jsonl sink: {self.file}: line {bad[0]}: {bad[2]}")
                    last_start, offset = offset, offset + len(line)
                    reason = self._apply(line, state)
                    if reason is not None:
                        bad = (number, last_start, reason)
        except OSError as exc:
            raise SinkError(f"jsonl sink: cannot read {self.file}: {exc.strerror}") from exc
        if bad is not None:
            try:
                self._truncate(fd, bad[1])
            except OSError as exc:
                raise SinkError(f"jsonl sink: cannot recover {self.file}: {exc.strerror}") from exc
            self.recovered_bytes += offset - bad[1]
        for (entity_type, ident), entity in state.items():
            yield entity_type, ident, entity

    @staticmethod
    def _apply(line: bytes, state: dict[tuple[str, int], dict[str, Any]]) -> str | None:
        """Replay one line into ``state``; the reason it is unusable, or None."""
        if not line.endswith(b"\n"):
            return "torn line"
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return f"invalid JSON: {exc}"
        if not isinstance(record, dict) or record.keys() != _KEY_SET:
            return "not a change record"
        if record["origin"] == "system":
            return None
        entity = record["entity"]
        ident = entity.get("id") if isinstance(entity, dict) else None
        if not isinstance(ident, int):
            return "entity without an integer id"
        key = (record["entityType"], ident)
        if record["eventType"] in UPSERT_EVENTS:
            state[key] = entity
        elif record["eventType"] == DELETE_EVENT:
            state.pop(key, None)
        else:
            return f"unknown eventType {record['eventType']!r}"
        return None

    def write(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        line = self._line
        buffer = memoryview(b"".join([line(change) for change in changes]))
        fd = self._descriptor()
        start: int | None = None
        try:
            start = os.fstat(fd).st_size
            written = 0
            while written < len(buffer):
                written += os.write(fd, buffer[written:])
            os.fdatasync(fd)
        except OSError as exc:
            self._undo(fd, start)
            raise SinkError(f"jsonl sink: {self.file}: batch of {len(changes)} not written: {exc.strerror}") from exc

    def _undo(self, fd: int, start: int | None) -> None:
        if start is None:
            return
        try:
            self._truncate(fd, start)
        except OSError:
            self._broken = True

    def _line(self, change: Change) -> bytes:
        entity = change.entity
        if change.origin != "system" and (
            # The line format has no separate id, so replay takes it from the
            # entity; a change whose entity does not carry it could not be replayed.
            type(entity) is not dict
            or entity.get("id") != change.id
            or change.id is None
            or change.event_type not in EVENT_TYPES
        ):
            raise self._refused(change)
        try:
            return _dumps(
                {
                    "origin": change.origin,
                    "entityType": change.entity_type,
                    "eventType": change.event_type,
                    "entity": entity,
                    "receivedAt": change.received_at,
                },
                option=_NEWLINE,
            )
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise dump_error("jsonl", self.file, change, exc) from exc

    def _refused(self, change: Change) -> SinkError:
        if change.event_type not in EVENT_TYPES:
            return SinkError(
                f"jsonl sink: {self.file}: unknown event type {change.event_type!r} "
                f"for {change.entity_type} id={change.id}"
            )
        return SinkError(
            f"jsonl sink: {self.file}: {change.entity_type} {change.event_type} "
            f"id={change.id}: entity must be an object carrying that id"
        )

    def close(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)
