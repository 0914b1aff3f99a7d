"""journald's stream protocol: is this fd the journal, and the ``<N>`` priority prefix of a line.

systemd connects a service's stdout/stderr to journald and names that stream
in ``$JOURNAL_STREAM`` as ``device:inode`` (decimal). journald reads a leading
``<N>`` on each line as its syslog priority (``SyslogLevelPrefix=yes``, the
default) and strips it, so ``journalctl -p warning`` sees our levels. The
variable is inherited by children whose stderr may be something else (a pipe,
a file): only a stream whose ``fstat`` matches gets the prefix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import IO, Any, Final

__all__ = ["CRIT", "DEBUG", "ERR", "INFO", "WARNING", "is_journal_fd", "is_journal_stream", "mark", "prefix",
           "priority_of_levelno"]

# syslog(3) priorities, as sd-daemon.h spells them
CRIT: Final = 2
ERR: Final = 3
WARNING: Final = 4
INFO: Final = 6
DEBUG: Final = 7

def priority_of_levelno(levelno: int) -> int:
    """The syslog priority of a stdlib ``logging`` level number."""
    if levelno >= logging.CRITICAL:
        return CRIT
    if levelno >= logging.ERROR:
        return ERR
    if levelno >= logging.WARNING:
        return WARNING
    if levelno >= logging.INFO:
        return INFO
    return DEBUG


def is_journal_fd(fd: int, journal_stream: str | None) -> bool:
    """Whether *fd* is the stream *journal_stream* (``$JOURNAL_STREAM``, ``device:inode``) names."""
    if not journal_stream:
        return False
    device, sep, inode = journal_stream.strip().partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        info = os.fstat(fd)
    except OSError:
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def is_journal_stream(stream: IO[Any], environ: Mapping[str, str] = os.environ) -> bool:
    """Whether *stream* writes to the journal stream systemd connected this service to."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return is_journal_fd(fd, environ.get("JOURNAL_STREAM"))


def prefix(priority: int) -> bytes:
    """The ``<N>`` journald reads as the priority of the line it starts."""
    return b"<%d>" % priority


def mark(line: bytes, priority: int) -> bytes:
    """*line* (newline-terminated, maybe several lines) with every line prefixed by ``<priority>``.

    Each line is its own journal entry, so a multi-line record (a console
    traceback) keeps its priority on every line.
    """
    tag = prefix(priority)
    body = line[:-1] if line.endswith(b"\n") else line
    return tag + body.replace(b"\n", b"\n" + tag) + (b"\n" if line.endswith(b"\n") else b"")
