"""Reading and creating files the way a daemon facing untrusted paths must: regular files only, bounded, no symlinks.

A config or credential path may point at a FIFO (opening it would block the
parent's loop), a directory, a device or something huge; a state directory
may be world-writable or planted with symlinks.  These helpers refuse each
with a clear reason instead of hanging, crashing or following the link.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["UnsafePath", "check_state_dir", "open_nofollow", "read_regular_file"]


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


class UnsafePath(ValueError):
    """A path the daemon refuses to use, and why (the message names the path)."""


def check_state_dir(path: str) -> None:
    """Refuse a state directory another local user could plant files in.

    A directory that is world-writable without the sticky bit, or owned by
    another user (root excepted), lets someone else replace a shard's files
    (or put a symlink where one will be created).  The path itself may be a
    symlink (systemd's DynamicUser state directories are).
    """
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"{path} is not a directory")
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise UnsafePath(f"{path} is writable by every user (mode {mode:04o}); chmod o-w {path}")
    if info.st_uid not in (os.geteuid(), 0):
        raise UnsafePath(f"{path} is owned by uid {info.st_uid}, not by this user ({os.geteuid()})")


def open_nofollow(path: str, flags: int, mode: int = 0o640) -> int:
    """``os.open`` that never follows a symlink at ``path`` itself: a planted link is an error, its target untouched."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{path} is a symbolic link; refusing to follow it") from None
        raise
