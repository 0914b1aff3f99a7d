"""A short-lived forked helper that writes one answer to a pipe and exits: the parent's way to block elsewhere.

The parent loop must never block (HTTP, a disk, a database) and must stay
single-threaded, so blocking work runs in a forked child.  This module is
what every such helper shares: the fork and its pipe, the child's setup
(dies with the parent, keeps only its pipe, ignores the parent's reload and
interrupt signals), writing the answer whole, and the parent's side that
drains the pipe without blocking.  ``authcall.py`` (login, renewal) and
``retirer.py`` (retiring shards) each add what their answer means.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
from collections.abc import Callable
from typing import NoReturn

from shardsync.prctl import set_pdeathsig

__all__ = ["HelperCall", "fork_helper"]


def fork_helper(work: Callable[[], bytes]) -> tuple[int, int]:
    """Fork a child that runs ``work`` and writes its bytes to a pipe; returns (pid, the pipe's read end)."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        _child(work, write_fd)
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    return pid, read_fd


def _child(work: Callable[[], bytes], fd: int) -> NoReturn:
    code = 0
    try:
        from shardsync.worker.boot import close_inherited

        set_pdeathsig(signal.SIGKILL)
        close_inherited({fd})
        for sig in (signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        view = memoryview(work())
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        code = 1
    finally:
        os._exit(code)


class HelperCall:
    """The parent's side of one helper: its pid, the pipe to drain, the deadline after which it is killed."""

    def __init__(self, pid: int, fd: int, deadline: float, *, kill: Callable[[int, int], None] = os.kill) -> None:
        self.pid = pid
        self.fd = fd
        self.deadline = deadline
        self._data = bytearray()
        self._kill = kill

    def drain(self) -> bytes | None:
        """Read what is there; the whole answer once the helper closed the pipe (empty if it died first)."""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return None
            if not chunk:
                return bytes(self._data)
            self._data += chunk

    def finish(self, selector: selectors.BaseSelector) -> None:
        """The answer is in: stop watching the pipe and close it (the helper is reaped when it exits)."""
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(self.fd)
        self.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
