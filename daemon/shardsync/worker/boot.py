"""What a freshly forked worker does before it runs its shard, and how it ends.

Order matters: the parent-death signal is armed first and then the parent pid
is checked (the parent may have died between fork and prctl); then signals,
environment, inherited descriptors, process title and logging are made the
worker's own.  The function never returns: a forked child must not fall back
into the parent's code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from typing import NoReturn

from shardsync import ipc
from shardsync.environ import scrub_environ
from shardsync.exitcodes import EX_CRASH
from shardsync.logs import reconfigure_after_fork
from shardsync.prctl import set_pdeathsig
from shardsync.worker.allocator import keep_freed_memory
from shardsync.worker.options import WorkerOptions


def close_inherited(keep: set[int]) -> None:
    """Close every descriptor but stdio and ``keep`` (sibling pipes, status socket, selector)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            # The listing's own descriptor is already gone by now.
            with contextlib.suppress(OSError):
                os.close(fd)


def run_child(
    options: WorkerOptions,
    remainder: int,
    *,
    parent_pid: int,
    inbox_fd: int,
    outbox_fd: int,
) -> NoReturn:
    """Become the worker of ``remainder``; exits the process with the worker's code."""
    code = EX_CRASH
    try:
        set_pdeathsig(signal.SIGTERM)
        if os.getppid() != parent_pid:
            os._exit(0)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        close_inherited({inbox_fd, outbox_fd, wake_r, wake_w})
        for sig in (signal.SIGHUP, signal.SIGINT):
            # The parent owns reloads and Ctrl-C; it stops workers itself.
            signal.signal(sig, signal.SIG_IGN)
        # A server that resets the connection must cost a reconnect, never the
        # worker: with SIGPIPE ignored a write to a dead socket raises EPIPE,
        # which ends the session like any other connection loss.
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        for sig in (signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        # Imported only here, after fork: the parent that imports this module
        # never loads the worker's session, its WebSocket client or its sinks.
        from shardsync.worker import parent, session

        signal.signal(signal.SIGTERM, parent.on_terminate)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        scrub_environ()
        _set_title(f"shardsync: shard {remainder}/{options.divisor}")
        reconfigure_after_fork(remainder, options.divisor)
        keep_freed_memory()
        os.set_blocking(outbox_fd, False)

        def send(message: ipc.Message) -> bool:
            return ipc.send(outbox_fd, message)

        code = session.Worker(options, remainder, inbox_fd=inbox_fd, send=send, wake_fd=wake_r).run()
    except BaseException:
        try:
            from shardsync.logs import get_logger

            get_logger("shardsync.worker").exception("worker_crashed", remainder=remainder)
        except BaseException:
            traceback.print_exc(file=sys.stderr)
        code = EX_CRASH
    finally:
        try:
            sys.stderr.flush()
            sys.stdout.flush()
        finally:
            os._exit(code)


def _set_title(title: str) -> None:
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except ImportError:  # pragma: no cover - setproctitle is a dependency
        pass
