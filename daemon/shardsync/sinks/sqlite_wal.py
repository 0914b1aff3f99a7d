"""What a shard file's WAL says from outside SQLite: the log since it last started over, the file's size, its restarts.

Formats: sqlite.org/walformat.html.  The wal-index header sits at the start of the ``-shm`` file SQLite
maps (native byte order); ``mxFrame`` there counts the frames of the log since the WAL last started over,
which the WAL file's size cannot tell once frames overwrite it from its start.  The WAL file's own
header holds the checkpoint sequence number, one more at each start over.  These are read without
SQLite's locks: hints for when to checkpoint, never a decision SQLite takes.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from typing import Final

#: The wal-index header and a WAL frame's header, bytes.
WAL_INDEX_HEADER: Final = 48
WAL_FRAME_HEADER: Final = 24


class WalIndex:
    """Reads the log length of one database from its ``-shm`` file, through a descriptor kept open."""

    def __init__(self, file: str) -> None:
        self.path = file + "-shm"
        self._fd: int | None = None

    def log_bytes(self) -> int | None:
        """Bytes of log since the WAL last started over, None when the wal-index cannot be read."""
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            header = os.pread(self._fd, WAL_INDEX_HEADER, 0)
        except OSError:
            return None
        if len(header) < WAL_INDEX_HEADER or not header[12]:  # isInit
            return None
        page = int.from_bytes(header[14:16], sys.byteorder)
        frames = int.from_bytes(header[16:20], sys.byteorder)
        return frames * ((65536 if page == 1 else page) + WAL_FRAME_HEADER)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def wal_bytes(file: str) -> int:
    """The WAL file's size (0 when there is none); never raises."""
    try:
        return os.stat(file + "-wal").st_size
    except OSError:
        return 0


def restarts(file: str) -> int:
    """How many times the WAL started over (its checkpoint sequence number); 0 without a WAL header.

    With ``synchronous=NORMAL`` each start over is one fsync of the WAL header by the committing thread.
    """
    try:
        with open(file + "-wal", "rb") as wal:
            header = wal.read(16)
    except OSError:
        return 0
    return int(struct.unpack(">I", header[12:16])[0]) if len(header) == 16 else 0


def sync_wal(file: str) -> None:
    """fsync the WAL file: the commits in it become durable.  Raises OSError."""
    fd = os.open(file + "-wal", os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
