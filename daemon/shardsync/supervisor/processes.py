"""The process calls the parent makes, gathered in one injectable value.

The arbiter forks workers and login helpers, opens pidfds, signals and reaps
only through a :class:`Processes`.  The default is the real thing; unit tests
pass fakes, so the whole loop runs in-process without a single child.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from shardsync.config import Settings
from shardsync.credentials import Credentials
from shardsync.supervisor.authcall import AuthCall
from shardsync.supervisor.retire import RetireJob
from shardsync.supervisor.retirer import RetireCall
from shardsync.supervisor.tokens import Action
from shardsync.worker.boot import run_child
from shardsync.worker.options import WorkerOptions

__all__ = ["Launch", "Processes", "describe", "fork_worker"]


@dataclass(frozen=True, slots=True)
class Launch:
    """What a new worker process is given: its options and remainder, who its parent is, its ends of the pipes."""

    options: WorkerOptions
    remainder: int
    parent_pid: int
    inbox_fd: int
    outbox_fd: int


def fork_worker(launch: Launch) -> int:
    """Fork the worker of ``launch``; returns its pid (in the child this never returns)."""
    pid = os.fork()
    if pid == 0:
        run_child(launch.options, launch.remainder, parent_pid=launch.parent_pid,
                  inbox_fd=launch.inbox_fd, outbox_fd=launch.outbox_fd)
    return pid


def start_login(action: Action, settings: Settings, credentials: Credentials, now: float) -> AuthCall:
    """Fork the login helper for ``action`` (see ``authcall.py``)."""
    return AuthCall.start(action, settings, credentials, now)


def start_retire(jobs: list[RetireJob], now: float) -> RetireCall:
    """Fork the helper retiring ``jobs`` (see ``retirer.py``)."""
    return RetireCall.start(jobs, now)


@dataclass(frozen=True, slots=True)
class Processes:
    """Fork, pidfd, kill and waitpid, as the parent uses them."""

    fork_worker: Callable[[Launch], int] = fork_worker
    start_login: Callable[[Action, Settings, Credentials, float], AuthCall] = start_login
    start_retire: Callable[[list[RetireJob], float], RetireCall] = start_retire
    pidfd_open: Callable[[int], int] = os.pidfd_open
    kill: Callable[[int, int], None] = os.kill
    waitpid: Callable[[int, int], tuple[int, int]] = os.waitpid


def describe(status: int) -> str:
    """A waitpid status in words: ``exited with 1``, ``killed by SIGKILL``."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with {code}"
