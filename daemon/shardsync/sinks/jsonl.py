"""The append-only sink: one JSON line per change, ``<path>/shard-RRR-of-DDD.jsonl``, rotated and pruned.

Each batch is one buffer appended with ``write()`` and made durable with
``fdatasync`` before ``write()`` returns, so an acknowledged change survives
power loss too. If the batch fails in-process (ENOSPC, EIO, a bad entity) the
file is cut back to where the batch began: all or nothing. A crash of the
process in the middle of the append can leave a prefix of that unacknowledged
batch and a torn last line; opening the file cuts the torn line off (see
``recovered_bytes``) and the complete lines stay — they are changes the server
really sent, and the worker's resync after restart converges the state anyway.

Every line carries ``seq`` (1, 2, ... per shard, in commit order: the
cursor) and ``accountId``.  The active file is rotated into a segment when it
reaches ``rotate_bytes`` or a batch starts a new UTC day (file names in
``jsonl_files``); ``prune`` folds the oldest expired segment into the
checkpoint (the state as of its last line) and deletes it, so ``load()`` is
checkpoint + segments + active file.  Start-up cost grows with what is
retained: use sqlite when the log gets long.  The status sidecar is replaced
after each batch's fsync, never before.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from shardsync.atomicfile import replace_file
from shardsync.change import DELETE_EVENT, EVENT_TYPES, LOG_ONLY_ORIGINS, UPSERT_EVENTS, Change
from shardsync.sinks import jsonl_upgrade
from shardsync.sinks.base import (
    PRUNE_BATCH,
    Freshness,
    Sink,
    SinkError,
    cutoff,
    dump_error,
    ensure_dir,
    lock_exclusive,
    open_file,
    retired_status,
)
from shardsync.sinks.jsonl_files import (
    JsonlFiles,
    checkpoint_bytes,
    first_line,
    last_line,
    last_seq,
    last_seq_of,
    lines_of,
    read_checkpoint,
    read_status,
    rfind_newline,
)
from shardsync.sinks.retired import move_to_retired, sync_directory

#: The keys of every line, in order; a public contract.
KEYS = ("seq", "origin", "entityType", "eventType", "accountId", "entity", "receivedAt")
#: The active file is rotated into a segment at this size (or at a new UTC day).
ROTATE_BYTES = 64 << 20

_KEY_SET = frozenset(KEYS)
_dumps = orjson.dumps
_NEWLINE = orjson.OPT_APPEND_NEWLINE
State = dict[tuple[str, int], Any]
_DAY = re.compile(r"\d{4}-\d\d-\d\d")


def day_of(received_at: str) -> str:
    """The UTC day of an ISO-8601 ``received_at`` ("" when it is not one: no day rotation then)."""
    day = received_at[:10]
    return day if _DAY.fullmatch(day) else ""


class JsonlSink(Sink):
    """An flock'd, append-only, rotated JSON-lines change log that replays into current state."""

    def __init__(self, path: str, *, remainder: int, divisor: int, rotate_bytes: int = ROTATE_BYTES) -> None:
        self.remainder, self.divisor = remainder, divisor
        self.files = JsonlFiles(path, remainder, divisor)
        self.file = self.files.active
        self.rotate_bytes = rotate_bytes
        #: Bytes of a torn or unparseable last line cut off since opening.
        self.recovered_bytes = 0
        ensure_dir("jsonl", path)
        self._fd: int | None = None
        self._broken = False
        self._lock_fd: int | None = open_file("jsonl", self.files.lock, os.O_RDWR)
        try:
            lock_exclusive("jsonl", self._lock_fd, self.file)
            self._fd = self._open_active()
            # Trimmed at open, not only in load(): a write() appended after a
            # torn line would glue two changes into one corrupt line.
            self._trim_torn_tail(self._fd)
            if jsonl_upgrade.needs_upgrade(self._fd):
                jsonl_upgrade.upgrade(self.file)
                os.close(self._fd)
                self._fd = self._open_active()
            self._read_position(self._fd)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"JsonlSink({self.file!r})"

    def _open_active(self) -> int:
        return open_file("jsonl", self.file, os.O_RDWR | os.O_APPEND)

    def _read_position(self, fd: int) -> None:
        """Where the log stands: next seq, the active file's size, first seq and day."""
        try:
            self._size = os.fstat(fd).st_size
            self._first_seq: int | None = None
            self._day: str | None = None
            first = first_line(fd)
            if first is not None:
                with contextlib.suppress(ValueError, AttributeError):
                    record = orjson.loads(first)
                    self._first_seq, self._day = record.get("seq"), day_of(str(record.get("receivedAt", "")))
            previous = last_seq(fd)
            if previous is None:
                segments = self.files.segments()
                previous = last_seq_of(segments[-1][1]) if segments else None
            if previous is None:
                previous = read_checkpoint(self.files.checkpoint)[0]
        except (OSError, ValueError) as exc:
            raise SinkError(f"jsonl sink: cannot read the position of {self.file}: {exc}") from exc
        self._next_seq = previous + 1

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
            keep = rfind_newline(fd, size) + 1
            if keep < size:
                self._truncate(fd, keep)
                self.recovered_bytes += size - keep
        except OSError as exc:
            raise SinkError(f"jsonl sink: cannot recover {self.file}: {exc.strerror}") from exc

    @staticmethod
    def _truncate(fd: int, size: int) -> None:
        os.ftruncate(fd, size)
        os.fdatasync(fd)

    # --- reading back ---------------------------------------------------------------

    def load(self) -> Iterator[tuple[str, int, dict[str, Any]]]:
        fd = self._descriptor()
        try:
            after, state = read_checkpoint(self.files.checkpoint)
            for _, segment in self.files.segments():
                self._replay_strict(segment, lines_of(segment), state, after)
        except OSError as exc:
            raise SinkError(f"jsonl sink: cannot read {self.file}'s history: {exc.strerror}") from exc
        except ValueError as exc:
            raise SinkError(f"jsonl sink: {exc}") from exc
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
                    reason = self._apply(line, state, after)
                    if reason is not None:
                        bad = (number, last_start, reason)
        except OSError as exc:
            raise SinkError(f"jsonl sink: cannot read {self.file}: {exc.strerror}") from exc
        if bad is not None:
            try:
                self._truncate(fd, bad[1])
                self._read_position(fd)
            except OSError as exc:
                raise SinkError(f"jsonl sink: cannot recover {self.file}: {exc.strerror}") from exc
            self.recovered_bytes += offset - bad[1]
        for (entity_type, ident), entity in state.items():
            yield entity_type, ident, entity

    def _replay_strict(self, path: str, lines: Iterable[bytes], state: State, after: int) -> int:
        """Replay a segment, where no line may be damaged; returns its last seq."""
        last = after
        for number, line in enumerate(lines, 1):
            reason = self._apply(line, state, after)
            if reason is not None:
                raise SinkError(f"jsonl sink: {path}: line {number}: {reason}")
            last = max(last, orjson.loads(line)["seq"])
        return last

    @staticmethod
    def _apply(line: bytes, state: State, after: int) -> str | None:
        """Replay one line into ``state`` unless its seq is ``after`` or older; the reason it is unusable, or None."""
        if not line.endswith(b"\n"):
            return "torn line"
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return f"invalid JSON: {exc}"
        if not isinstance(record, dict) or record.keys() != _KEY_SET or type(record["seq"]) is not int:
            return "not a change record"
        if record["origin"] in LOG_ONLY_ORIGINS or record["seq"] <= after:
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

    # --- writing ---------------------------------------------------------------------

    def write(self, changes: Sequence[Change], freshness: Freshness | None = None) -> None:
        if not changes:
            if freshness is not None:
                self.mark(freshness)
            return
        if freshness is not None:
            self.check_freshness(freshness)
        line, seq = self._line, self._next_seq
        buffer = memoryview(b"".join([line(change, seq + n) for n, change in enumerate(changes)]))
        self._rotate_if_due(day_of(changes[0].received_at))
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
            # Its seqs are not handed out again: a follower may have seen the lines before the cut.
            self._next_seq = seq + len(changes)
            raise SinkError(f"jsonl sink: {self.file}: batch of {len(changes)} not written: {exc.strerror}") from exc
        self._next_seq = seq + len(changes)
        self._size = start + len(buffer)
        if self._first_seq is None:
            self._first_seq, self._day = seq, day_of(changes[0].received_at)
        if freshness is not None:
            self.mark(freshness)

    def _rotate_if_due(self, day: str) -> None:
        if not self._size or self._first_seq is None:
            return
        if self._size < self.rotate_bytes and (not day or not self._day or day == self._day):
            return
        fd = self._descriptor()
        try:
            # Every batch in it was fdatasynced already; the rename is the whole rotation.
            os.rename(self.file, self.files.segment(self._first_seq))
            self._fd = self._open_active()
            os.close(fd)
            sync_directory(self.files.directory)
        except OSError as exc:
            raise SinkError(f"jsonl sink: cannot rotate {self.file}: {exc.strerror}") from exc
        self._size, self._first_seq, self._day = 0, None, None

    def _undo(self, fd: int, start: int | None) -> None:
        if start is None:
            return
        try:
            self._truncate(fd, start)
        except OSError:
            self._broken = True

    def _line(self, change: Change, seq: int) -> bytes:
        # With its text (the mirror's), the entity is not parsed again: the mirror keyed it by that id.
        data = change.data
        entity = change.entity if data is None else orjson.Fragment(data)
        if change.origin not in LOG_ONLY_ORIGINS and (
            # The line format has no separate id, so replay takes it from the
            # entity; a change whose entity does not carry it could not be replayed.
            (data is None and (type(entity) is not dict or entity.get("id") != change.id))
            or change.id is None
            or change.event_type not in EVENT_TYPES
        ):
            raise self._refused(change)
        try:
            return _dumps(
                {
                    "seq": seq,
                    "origin": change.origin,
                    "entityType": change.entity_type,
                    "eventType": change.event_type,
                    "accountId": change.account_id,
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

    def mark(self, freshness: Freshness) -> None:
        self.check_freshness(freshness)
        self._descriptor()
        try:
            # Not fsynced: rewritten every heartbeat, and a reader treats a
            # missing or unreadable sidecar as "unknown", never as live.
            replace_file(self.files.status, orjson.dumps(freshness.to_json()), durable=False)
        except OSError as exc:
            raise SinkError(f"jsonl sink: cannot write {self.files.status}: {exc.strerror}") from exc

    def status(self) -> Freshness | None:
        return read_status(self.files.status)

    def prune(self, retention: float, *, now: float, limit: int = PRUNE_BATCH) -> int:
        """Fold the oldest segment into the checkpoint once all of it is older than the retention.

        One segment per call whatever ``limit`` says (a segment is the unit a
        jsonl log can drop); it costs reading the checkpoint and the segment.
        """
        before = cutoff(retention, now)
        segments = self.files.segments()
        if before is None or not segments:
            return 0
        self._descriptor()
        _, oldest = segments[0]
        try:
            fd = os.open(oldest, os.O_RDONLY | os.O_CLOEXEC)
            try:
                tail = last_line(fd)
            finally:
                os.close(fd)
            if tail is None or str(orjson.loads(tail).get("receivedAt")) >= before:
                return 0
            after, state = read_checkpoint(self.files.checkpoint)
            lines = list(lines_of(oldest))
            last = self._replay_strict(oldest, lines, state, after)
            replace_file(self.files.checkpoint, checkpoint_bytes(last, state))
            os.unlink(oldest)
            sync_directory(self.files.directory)
        except OSError as exc:
            raise SinkError(f"jsonl sink: cannot prune {oldest}: {exc.strerror}") from exc
        except ValueError as exc:
            raise SinkError(f"jsonl sink: cannot prune {oldest}: {exc}") from exc
        return len(lines)

    def close(self) -> None:
        for name in ("_fd", "_lock_fd"):
            fd = getattr(self, name, None)
            setattr(self, name, None)
            if fd is not None:
                # Closing the lock descriptor releases the flock.
                os.close(fd)


def retire(path: str, *, remainder: int, divisor: int) -> str | None:
    """Mark the jsonl shard ``retired`` and move all its files to ``<path>/retired/``; None when it has no log."""
    files = JsonlFiles(path, remainder, divisor)
    if not os.path.exists(files.active) and not files.segments():
        return None
    sink = JsonlSink(path, remainder=remainder, divisor=divisor)
    try:
        sink.mark(retired_status(sink.status(), remainder, divisor))
        # Moved while the lock is still held: no writer can open the shard in between.
        return move_to_retired("jsonl", path, files.all_names())
    finally:
        sink.close()
