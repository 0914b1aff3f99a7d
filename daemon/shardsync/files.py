"""Reading and creating files the way a daemon facing untrusted paths must: regular files only, bounded, no symlinks.

A config or credential path may point at a FIFO (opening it would block the
parent's loop), a directory, a device or something huge; a state directory
may be world-writable or planted with symlinks.  These helpers refuse each
with a clear reason instead of hanging, crashing or following the link.
"""

from __future__ import annotations

import os
import stat

__all__ = ["read_regular_file"]


def read_regular_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file, never blocking on a FIFO or device; OSError/ValueError else."""
    # O_NONBLOCK: opening a FIFO without a writer would block the caller (the parent's loop on SIGHUP).
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > limit:
            raise ValueError(f"too large ({info.st_size} bytes; at most {limit})")
        chunks = []
        total = 0
        while chunk := os.read(fd, 65536):
            total += len(chunk)
            if total > limit:
                raise ValueError(f"too large (more than {limit} bytes)")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
