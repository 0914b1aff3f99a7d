"""One REST call (login or renewal) run in a short-lived forked child.

The parent loop must never block on HTTP, and it must stay single-threaded;
so the blocking call runs in a child that writes the outcome to a pipe and
exits.  The token crosses only that pipe.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import NoReturn

from shardsync import auth
from shardsync.auth import Credentials, Outcome
from shardsync.config import Settings
from shardsync.prctl import set_pdeathsig
from shardsync.supervisor.child import close_inherited
from shardsync.supervisor.tokens import Action, DoLogin, DoRenew


class AuthCall:
    """A forked child doing one ``Action``; the parent reads its outcome from ``fd``."""

    def __init__(self, action: Action, pid: int, fd: int, deadline: float) -> None:
        self.action = action
        self.pid = pid
        self.fd = fd
        self.deadline = deadline
        self._data = bytearray()
        self.exited = False

    @classmethod
    def start(cls, action: Action, settings: Settings, credentials: Credentials, now: float) -> AuthCall:
        timeout = settings.tradovate.handshake_timeout
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            _child(action, settings, credentials, write_fd, timeout)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        # Twice the HTTP timeout: DNS, connect and read each have their own.
        return cls(action, pid, read_fd, now + 2 * timeout + 5)

    def read(self) -> Outcome | None:
        """Drain the pipe; the outcome once the child closed it, else None."""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return None
            if not chunk:
                break
            self._data += chunk
        if not self._data:
            return auth.Failed("login helper exited without an answer")
        try:
            return auth.outcome_from_json(bytes(self._data))
        except ValueError as exc:
            return auth.Failed(f"login helper answer unreadable: {exc}")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _child(action: Action, settings: Settings, credentials: Credentials, fd: int, timeout: float) -> NoReturn:
    code = 0
    try:
        set_pdeathsig(signal.SIGKILL)
        close_inherited({fd})
        for sig in (signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        t = settings.tradovate
        outcome: Outcome
        if isinstance(action, DoRenew):
            outcome = auth.renew_token(t.rest_url, action.token, timeout=timeout)
        else:
            assert isinstance(action, DoLogin)
            outcome = auth.request_token(
                t.rest_url, credentials, app_id=t.app_id, app_version=t.app_version, cid=t.cid,
                device_id=t.device_id, ticket=action.ticket, timeout=timeout,
            )
        data = auth.outcome_to_json(outcome)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        code = 1
    finally:
        os._exit(code)
