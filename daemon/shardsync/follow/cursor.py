"""Where ``follow`` stands in every shard: ``{(remainder, divisor): last seq written}``, kept in a file.

The file is JSON, ``{"version": 1, "positions": [{"divisor": 16, "remainder":
3, "seq": 1234}, ...]}``, replaced atomically (rename) and only after the
lines up to those positions were flushed to stdout.  So a stopped or killed
``follow`` resumes after the last line it delivered; only a kill between
the flush and the rename (or power loss) can repeat lines, never skip any —
dedupe on ``(divisor, shard, seq)`` if that matters.
"""

from __future__ import annotations

import os

import orjson

from shardsync.atomicfile import replace_file

ShardId = tuple[int, int]  # (remainder, divisor)


class CursorError(Exception):
    """The cursor file exists but cannot be read or is not a cursor."""


class Cursor:
    """Positions per shard, and whether they came from an existing file (a resumed follow)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.positions: dict[ShardId, int] = {}
        self.resumed = False
        self._saved: dict[ShardId, int] = {}
        if path is not None and os.path.exists(path):
            self.positions = self._read(path)
            self._saved = dict(self.positions)
            self.resumed = True

    @staticmethod
    def _read(path: str) -> dict[ShardId, int]:
        try:
            with open(path, "rb") as stream:
                data = orjson.loads(stream.read())
            if not isinstance(data, dict) or data.get("version") != 1:
                raise CursorError(f"{path}: not a shardsync follow cursor (version 1)")
            positions = {}
            for entry in data["positions"]:
                remainder, divisor, seq = entry["remainder"], entry["divisor"], entry["seq"]
                if not all(type(v) is int and v >= 0 for v in (remainder, divisor, seq)):
                    raise CursorError(f"{path}: bad position {entry!r}")
                positions[(remainder, divisor)] = seq
            return positions
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise CursorError(f"cannot read cursor {path}: {exc}") from exc

    def save(self) -> None:
        """Write the positions if they changed since the last save (call only after stdout was flushed)."""
        if self.path is None or self.positions == self._saved:
            return
        entries = [{"divisor": d, "remainder": r, "seq": s} for (r, d), s in sorted(self.positions.items(),
                                                                                     key=lambda i: (i[0][1], i[0][0]))]
        replace_file(self.path, orjson.dumps({"version": 1, "positions": entries}), durable=False)
        self._saved = dict(self.positions)
