"""The status listener's lifetime: bound at start (or the daemon does not start), moved by a reload, announced.

At start an address that cannot be bound is an error (:class:`StatusBindError`:
the daemon exits 1 naming it) rather than a daemon without /metrics nobody
notices.  A reload that moves the listener binds the new address before it
lets the old one go, so a failure keeps the old listener (and says so).
Every bound listener is announced in the log (``status_listening``) and in
the runtime file (``runtimefile.py``), which goes away with the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
from collections.abc import Callable

from shardsync.config import Settings
from shardsync.logs import get_logger
from shardsync.runtimefile import remove_runtime, runtime_path, write_runtime
from shardsync.statusclient import url_for_listen
from shardsync.supervisor.httpd import StatusServer
from shardsync.supervisor.status import StatusSnapshot

__all__ = ["StatusBindError", "StatusListener"]


class StatusBindError(Exception):
    """The configured status address cannot be bound at start."""

    def __init__(self, listen: str, reason: str) -> None:
        self.listen = listen
        self.reason = reason
        super().__init__(f"cannot listen on {listen} ([status] listen): {reason}")


class StatusListener:
    """The one status server of the parent (or none), and its runtime file."""

    def __init__(self, provider: Callable[[], StatusSnapshot], selector: selectors.BaseSelector, *,
                 config_path: str, pid: int, started_at: float) -> None:
        self.provider = provider
        self.selector = selector
        self.config_path = config_path
        self.pid = pid
        self.started_at = started_at
        self.server: StatusServer | None = None
        self._runtime: str | None = None
        self.log = get_logger("shardsync.supervisor")

    def open(self, settings: Settings) -> None:
        """Bind ``[status] listen`` (nothing when off); raises :class:`StatusBindError`."""
        address = settings.status.address
        if address is None:
            return
        try:
            server = StatusServer(address, self.provider)
        except OSError as exc:
            raise StatusBindError(settings.status.listen, exc.strerror or str(exc)) from None
        self._use(server, settings)

    def reconfigure(self, old: Settings, new: Settings) -> None:
        """A reload changed ``[status]`` or the sink (where the runtime file lives): move what moved."""
        if new.status == old.status:
            self._announce(new)  # the runtime file may move with the sink
            return
        address = new.status.address
        if address is None:
            self.close()
            self.log.info("status_listener_off")
            return
        try:
            server = StatusServer(address, self.provider)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or self.server is None or self.server.port != address[1]:
                self._refused(old, new, exc)
                return
            # The same port on another address: the old listener itself is in the way.
            self._release()
            try:
                server = StatusServer(address, self.provider)
            except OSError as again:
                self._refused(old, new, again)
                with contextlib.suppress(StatusBindError):
                    self.open(old)
                return
        self._release()
        self._use(server, new)

    def _refused(self, old: Settings, new: Settings, exc: OSError) -> None:
        self.log.error("status_listen_failed", listen=new.status.listen, error=exc.strerror or str(exc),
                       kept=old.status.listen if self.server is not None else None)

    def _use(self, server: StatusServer, settings: Settings) -> None:
        server.register(self.selector)
        self.server = server
        host, port = server.address
        self.log.info("status_listening", host=host, port=port)
        self._announce(settings)

    def _announce(self, settings: Settings) -> None:
        """(Re)write the runtime file where ``settings`` put it; its old place is cleared."""
        path = runtime_path(settings, self.config_path)
        if self._runtime is not None and self._runtime != path:
            remove_runtime(self._runtime, self.pid)
        self._runtime = None
        if self.server is None:
            return
        host, port = self.server.address
        try:
            write_runtime(path, pid=self.pid, host=host, port=port, url=url_for_listen((host, port)),
                          config=self.config_path, started_at=self.started_at)
        except OSError as exc:
            # Only `shardsync status -c` with port 0 needs it; the listener itself works.
            self.log.warning("runtime_file_failed", path=path, error=exc.strerror or str(exc))
            return
        self._runtime = path

    def _release(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def close(self) -> None:
        """Stop listening and remove the runtime file (shutdown, or a reload turning the listener off)."""
        self._release()
        if self._runtime is not None:
            remove_runtime(self._runtime, self.pid)
            self._runtime = None
