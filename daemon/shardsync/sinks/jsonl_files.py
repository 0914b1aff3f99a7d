"""The files of one jsonl shard, and reading them back (the sink, ``follow``, retire).

For shard ``S = shard-RRR-of-DDD`` in the state directory:

* ``S.jsonl`` — the active log, one change a line (see ``jsonl.KEYS``);
* ``S.<FIRST>.jsonl`` — rotated segments, ``FIRST`` the ``seq`` of the first
  line, 12 digits: in name order they are in ``seq`` order, and they come
  before the active file, so a reader goes segments-then-active;
* ``S.checkpoint.jsonl`` — the state as of the newest pruned segment
  (first line ``{"seq": N}``, then one ``[entityType, id, entity]`` a line);
* ``S.status.json`` — the freshness row (``shard_status`` columns as keys);
* ``S.jsonl.lock`` — the single-writer lock.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from typing import Any

import orjson

from shardsync.sinks.base import Freshness, shard_file_name

SEQ_WIDTH = 12
_TAIL_CHUNK = 64 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class JsonlFiles:
    """Where one jsonl shard's files are."""

    directory: str
    remainder: int
    divisor: int

    @property
    def stem(self) -> str:
        return shard_file_name(self.remainder, self.divisor, "jsonl").removesuffix(".jsonl")

    def _path(self, suffix: str) -> str:
        return os.path.join(self.directory, self.stem + suffix)

    @property
    def active(self) -> str:
        return self._path(".jsonl")

    @property
    def lock(self) -> str:
        return self._path(".jsonl.lock")

    @property
    def status(self) -> str:
        return self._path(".status.json")

    @property
    def checkpoint(self) -> str:
        return self._path(".checkpoint.jsonl")

    def segment(self, first_seq: int) -> str:
        return self._path(f".{first_seq:0{SEQ_WIDTH}d}.jsonl")

    def segments(self) -> list[tuple[int, str]]:
        """Rotated segments as ``(first seq, path)``, oldest first."""
        pattern = re.compile(re.escape(self.stem) + rf"\.(\d{{{SEQ_WIDTH},}})\.jsonl")
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        found = [(int(m[1]), os.path.join(self.directory, name)) for name in names if (m := pattern.fullmatch(name))]
        return sorted(found)

    def all_names(self) -> list[str]:
        """Every file name of the shard that exists now (retire moves them together)."""
        paths = [self.active, self.checkpoint, self.status, self.lock] + [p for _, p in self.segments()]
        return [os.path.basename(p) for p in paths]


def last_line(fd: int) -> bytes | None:
    """The last complete line (with its newline) of the open file ``fd``, or None if it has none."""
    end = rfind_newline(fd, os.fstat(fd).st_size)
    if end < 0:
        return None
    begin = rfind_newline(fd, end) + 1
    return os.pread(fd, end + 1 - begin, begin)


def rfind_newline(fd: int, before: int) -> int:
    """The offset of the last newline in ``fd`` before offset ``before``, or -1."""
    position = before
    while position > 0:
        start = max(0, position - _TAIL_CHUNK)
        found = os.pread(fd, position - start, start).rfind(b"\n")
        if found >= 0:
            return start + found
        position = start
    return -1


def last_seq(fd: int, tries: int = 8) -> int | None:
    """The ``seq`` of the last complete line that has one, looking back at most ``tries`` lines.

    A damaged last line (a crash mid-append) is skipped here; ``load()``
    reports or cuts it.
    """
    end = rfind_newline(fd, os.fstat(fd).st_size)
    for _ in range(tries):
        if end < 0:
            return None
        begin = rfind_newline(fd, end) + 1
        try:
            seq = orjson.loads(os.pread(fd, end + 1 - begin, begin)).get("seq")
        except (orjson.JSONDecodeError, AttributeError):
            seq = None
        if type(seq) is int:
            return seq
        end = begin - 1
    return None


def last_seq_of(path: str) -> int | None:
    """The ``seq`` of the last complete line of a log file (None: no such file or line)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return last_seq(fd)
    finally:
        os.close(fd)


def lines_of(path: str) -> Iterator[bytes]:
    """Every line of a file as bytes (the last possibly without its newline)."""
    with open(path, "rb") as stream:
        yield from stream


def read_checkpoint(path: str) -> tuple[int, dict[tuple[str, int], Any]]:
    """``(seq, state)`` of a checkpoint file; ``(0, {})`` when there is none.  Raises ValueError when corrupt."""
    try:
        lines = lines_of(path)
        header = next(lines, None)
    except FileNotFoundError:
        return 0, {}
    if header is None:
        raise ValueError(f"{path}: empty checkpoint")
    seq = orjson.loads(header).get("seq")
    if type(seq) is not int:
        raise ValueError(f"{path}: checkpoint without a seq")
    state: dict[tuple[str, int], Any] = {}
    for line in lines:
        entity_type, ident, entity = orjson.loads(line)
        state[(entity_type, ident)] = entity
    return seq, state


def checkpoint_bytes(seq: int, state: dict[tuple[str, int], Any]) -> bytes:
    newline = orjson.OPT_APPEND_NEWLINE
    parts = [orjson.dumps({"seq": seq}, option=newline)]
    parts += [orjson.dumps([entity_type, ident, entity], option=newline) for (entity_type, ident), entity in
              state.items()]
    return b"".join(parts)


def read_status(path: str) -> Freshness | None:
    """The freshness sidecar, or None when absent or unreadable (a reader treats that as unknown)."""
    try:
        with open(path, "rb") as stream:
            return Freshness.from_json(orjson.loads(stream.read()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def first_line(fd: int) -> bytes | None:
    """The first complete line (with its newline) of the open file ``fd``, or None if it has none."""
    size = os.fstat(fd).st_size
    offset = 0
    while offset < size:
        chunk = os.pread(fd, _TAIL_CHUNK, offset)
        if not chunk:
            break
        found = chunk.find(b"\n")
        if found >= 0:
            return os.pread(fd, offset + found + 1, 0)
        offset += len(chunk)
    return None
