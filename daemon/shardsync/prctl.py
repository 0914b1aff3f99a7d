"""Linux process controls the daemon relies on: parent-death signal, and no core dumps or same-user memory reads."""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import signal

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _prctl(option: int, value: int, what: str) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({what}) failed: errno {errno}")


def set_pdeathsig(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when the thread that forked it exits."""
    _prctl(PR_SET_PDEATHSIG, sig, "PR_SET_PDEATHSIG")


def forbid_dumps() -> None:
    """No core file, and no other process of the same user may read this one's memory.

    The parent holds the password and API secret, workers hold the token:
    ``PR_SET_DUMPABLE 0`` makes ``/proc/PID/mem`` (and ptrace) need
    CAP_SYS_PTRACE, and ``RLIMIT_CORE 0`` keeps a crash from writing them to
    disk.  Both are inherited by forked workers and login helpers (and reset by
    exec, so a re-exec'ed parent calls this again).
    """
    _prctl(PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
