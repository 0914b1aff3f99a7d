"""The signals the parent handles, carried into its loop by the wakeup fd.

The Python-level handler does nothing: the C-level handler has already
written the signal's number to the wakeup pipe, which the loop's selector
watches.  All work happens in the loop (gunicorn #3198, #3004).
"""

from __future__ import annotations

import os
import signal
from typing import Any, Final

__all__ = ["NAMES", "SIGNALS", "WakeupPipe"]

SIGNALS: Final = {
    signal.SIGTERM: "term",
    signal.SIGINT: "int",
    signal.SIGHUP: "hup",
    signal.SIGCHLD: "chld",
}

#: Signal number -> the arbiter's ``handle_<name>``.
NAMES: Final = {int(sig): name for sig, name in SIGNALS.items()}


class WakeupPipe:
    """The wakeup fd and the handlers that make each of :data:`SIGNALS` reach it."""

    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for sig in SIGNALS:
            signal.signal(sig, _wake_only)

    def drain(self) -> list[int]:
        """The signal numbers delivered since the last call, in order."""
        numbers: list[int] = []
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return numbers
            if not data:
                return numbers
            numbers.extend(data)

    def close(self) -> None:
        """Stop using the pipe; the handlers stay, so a late signal still does nothing harmful."""
        signal.set_wakeup_fd(-1)
        os.close(self.fd)
        os.close(self._write_fd)


def _wake_only(signum: int, frame: Any) -> None:
    """Signal handler: the wakeup fd already carries the signal into the loop."""
