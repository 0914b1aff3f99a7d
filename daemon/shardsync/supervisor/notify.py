"""sd_notify by hand: one AF_UNIX datagram per message to ``$NOTIFY_SOCKET``.

Only the parent speaks to systemd (``NotifyAccess=main`` drops anything a
worker sends), so workers get an environment without the three variables
(:mod:`shardsync.environ`).  A failed send is reported as ``False`` and never raised: readiness and
watchdog pings are advisory, the shards are what matter.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]


class Notifier:
    """Sends sd_notify messages from the main process; a no-op outside systemd."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        # "@name" is the abstract namespace, spelled with a leading NUL on the wire.
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        self.watchdog_usec = watchdog_usec

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, *, pid: int | None = None) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET``, its watchdog armed only if meant for this pid."""
        usec: int | None = None
        raw_usec = environ.get("WATCHDOG_USEC", "")
        raw_pid = environ.get("WATCHDOG_PID", "")
        # An inherited WATCHDOG_PID names our parent: the watchdog is not ours (systemd #25961).
        mine = not raw_pid or (raw_pid.isdigit() and int(raw_pid) == (os.getpid() if pid is None else pid))
        if mine and raw_usec.isdigit() and int(raw_usec) > 0:
            usec = int(raw_usec)
        return cls(environ.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to talk to."""
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half the timeout), or None without a watchdog."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def send(self, text: str | None = None, /, **fields: object) -> bool:
        """Send ``text`` and/or ``KEY=value`` lines as one datagram; True if it left."""
        if self.address is None:
            return False
        # A newline in a value would forge another assignment (STATUS=...\nREADY=1).
        lines = [text] if text else []
        lines += [f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)  # a stalled systemd must never stall the loop
                sock.sendto("\n".join(lines).encode(), self.address)
        except (OSError, UnicodeEncodeError):
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (start-up or reload finished), with a status line if given."""
        return self.send(READY=1, **_status(status))

    def status(self, text: str) -> bool:
        """``STATUS=`` line shown by ``systemctl status``."""
        return self.send(STATUS=text)

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with the ``MONOTONIC_USEC`` that Type=notify-reload requires."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, MONOTONIC_USEC=usec, **_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: final, there is no way back to ready after it."""
        return self.send(STOPPING=1, **_status(status))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive, due every :attr:`watchdog_interval`."""
        return self.send(WATCHDOG=1)


def _status(text: str | None) -> dict[str, str]:
    return {} if text is None else {"STATUS": text}
