"""Keeping variables out of a worker's environment: the sd_notify ones (only the parent speaks to systemd).

A forked child's ``/proc/PID/environ`` is the environment block the process
was exec'ed with, whatever ``os.environ`` says later: so the variables are
unset *and* their bytes in that block are zeroed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["NOTIFY_VARIABLES", "blank_environ_block", "child_environ", "scrub_environ"]

NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def child_environ(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """A copy of ``environ`` without the sd_notify variables, for a worker."""
    return {key: value for key, value in environ.items() if key not in NOTIFY_VARIABLES}


def scrub_environ() -> None:
    """Drop the sd_notify variables from ``os.environ`` (in a freshly forked worker).

    ``os.environ.pop`` unsets them in the C environment too, but a forked
    child's ``/proc/PID/environ`` shows the environment block the process was
    exec'ed with, which still holds them; so their bytes there are zeroed as well.
    """
    for key in NOTIFY_VARIABLES:
        os.environ.pop(key, None)
    blank_environ_block(NOTIFY_VARIABLES)


def blank_environ_block(names: tuple[str, ...]) -> int:
    """Zero ``NAME=value`` entries of ``names`` in this process's original environment block (Linux).

    Only safe once the variables are unset (nothing points at those bytes any
    more).  Best effort: returns how many entries were blanked, 0 where
    ``/proc/self`` cannot be used.
    """
    prefixes = tuple(f"{name}=".encode() for name in names)
    try:
        stat = Path("/proc/self/stat").read_bytes()
        fields = stat.rsplit(b")", 1)[1].split()
        # Fields 50 and 51 of proc(5), counted from the state (field 3).
        start, end = int(fields[50 - 3]), int(fields[51 - 3])
        fd = os.open("/proc/self/mem", os.O_RDWR | os.O_CLOEXEC)
    except (OSError, IndexError, ValueError):
        return 0
    blanked = 0
    try:
        block = os.pread(fd, end - start, start)
        offset = 0
        for entry in block.split(b"\0"):
            if entry.startswith(prefixes):
                os.pwrite(fd, bytes(len(entry)), start + offset)
                blanked += 1
            offset += len(entry) + 1
    except OSError:
        pass
    finally:
        os.close(fd)
    return blanked
