"""``follow`` over a jsonl state directory: each shard's segments, then its active file, by seq.

Per shard it keeps one open file and an offset; a poll is an ``fstat`` of
that file and a ``stat`` of the active path.  When the active path names
another file (the writer rotated), the open one is final: it is read to its
end, then the next file is opened.  Files moved away (retired) are drained
through the open descriptor, then the shard is dropped.
"""

from __future__ import annotations

import os
import select
from typing import Any

import orjson

from shardsync.follow.cursor import ShardId
from shardsync.follow.record import Record
from shardsync.follow.source import SourceError
from shardsync.sinks.base import Freshness, shard_files
from shardsync.sinks.jsonl_files import JsonlFiles, last_seq, last_seq_of, read_status

_CHUNK = 1 << 20


class _Shard:
    __slots__ = ("fd", "files", "ino", "is_active", "offset")

    def __init__(self, files: JsonlFiles) -> None:
        self.files = files
        self.fd: int | None = None
        self.ino = 0
        self.is_active = False
        self.offset = 0

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd, self.offset = None, 0


class JsonlSource:
    """Every ``shard-RRR-of-DDD.jsonl`` log directly in ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._shards: dict[ShardId, _Shard] = {}

    def shards(self) -> list[ShardId]:
        for shard in shard_files(self.path, "jsonl"):
            if shard not in self._shards:
                self._shards[shard] = _Shard(JsonlFiles(self.path, *shard))
        for shard, entry in list(self._shards.items()):
            if not os.path.exists(entry.files.active) and not entry.files.segments() and entry.fd is None:
                del self._shards[shard]
        return sorted(self._shards)

    def present(self) -> set[ShardId]:
        return set(self._shards)

    def head(self, shard: ShardId) -> int:
        files = self._shards[shard].files
        for path in [files.active] + [p for _, p in reversed(files.segments())]:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                seq = last_seq(fd)
            finally:
                os.close(fd)
            if seq is not None:
                return seq
        return 0

    def read(self, shard: ShardId, after: int, limit: int) -> list[Record]:
        entry = self._shards[shard]
        records: list[Record] = []
        try:
            while len(records) < limit:
                if entry.fd is None and not self._open(entry, after):
                    break
                got = self._read_lines(entry, after, limit - len(records))
                records += got
                if got:
                    after = got[-1].seq
                    continue
                if not self._finished(entry):
                    break
                entry.close()  # a rotated or retired file, read to its end: on to the next one
                if not entry.is_active:
                    continue
                if not os.path.exists(entry.files.active) and not entry.files.segments():
                    del self._shards[shard]  # retired: moved away and drained
                    break
        except OSError as exc:
            raise SourceError(f"cannot read {entry.files.active}: {exc.strerror}") from exc
        return records

    def _open(self, entry: _Shard, after: int) -> bool:
        """Open the file holding seq ``after + 1``: a segment, else the active file."""
        chosen: str | None = None
        for first, segment in reversed(entry.files.segments()):
            if first <= after + 1:
                end = last_seq_of(segment)
                if end is not None and end > after:
                    chosen = segment
                break
            # Starts after the position: the next file to read if nothing older holds it (or a gap: pruned).
            chosen = segment
        path = chosen or entry.files.active
        try:
            entry.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False  # between the rename of a rotation and the new file, or retired
        entry.ino, entry.is_active, entry.offset = os.fstat(entry.fd).st_ino, chosen is None, 0
        return True

    @staticmethod
    def _read_lines(entry: _Shard, after: int, limit: int) -> list[Record]:
        """Complete lines from the offset on (it stays on a line boundary); a line being written waits."""
        assert entry.fd is not None
        records: list[Record] = []
        size = _CHUNK
        while len(records) < limit:
            chunk = os.pread(entry.fd, size, entry.offset)
            end = chunk.rfind(b"\n") + 1
            if end == 0:
                if len(chunk) < size:
                    break
                size *= 2  # one line longer than the chunk
                continue
            for line in chunk[:end].splitlines(keepends=True):
                entry.offset += len(line)
                record = _record(orjson.loads(line))
                if record.seq > after:
                    records.append(record)
                    if len(records) >= limit:
                        return records
            size = _CHUNK
        return records

    @staticmethod
    def _finished(entry: _Shard) -> bool:
        """Whether the open file will never grow again: a segment, or an active file rotated or moved away."""
        if not entry.is_active:
            return True
        try:
            return os.stat(entry.files.active).st_ino != entry.ino
        except FileNotFoundError:
            return True

    def statuses(self) -> dict[ShardId, Freshness | None]:
        return {shard: read_status(entry.files.status) for shard, entry in self._shards.items()}

    def wait(self, timeout: float, wake_fd: int) -> None:
        select.select([wake_fd], [], [], timeout)

    def close(self) -> None:
        for entry in self._shards.values():
            entry.close()
        self._shards.clear()


def _record(line: Any) -> Record:
    try:
        entity = line["entity"]
        # The line has no id of its own: the entity's, as the sink stored it (none for system events).
        ident = entity.get("id") if isinstance(entity, dict) and line["origin"] != "system" else None
        return Record(line["seq"], line["origin"], line["entityType"], line["eventType"],
                      ident if type(ident) is int else None, line["accountId"], line["receivedAt"], entity)
    except (KeyError, TypeError) as exc:
        raise SourceError(f"not a change line: {exc}") from exc
