"""The parent's one login: the token keeper's calls carried out by short-lived helper processes.

:class:`TokenKeeper` (pure) says which REST call is due and what its outcome
means; this module starts that call in a forked helper (``authcall.py``),
reads the outcome from the helper's pipe in the loop's selector, reaps the
helper without ever blocking on it, and hands the result to the arbiter's
callbacks (a new token for the workers; a refused login ends the daemon).
"""

from __future__ import annotations

import selectors
from collections.abc import Callable

from shardsync.clip import clip
from shardsync.config import Settings
from shardsync.credentials import Credentials
from shardsync.ipc import MAX_TEXT
from shardsync.logs import get_logger
from shardsync.secrets import register_secret
from shardsync.supervisor.authcall import AuthCall
from shardsync.supervisor.processes import Processes
from shardsync.supervisor.tokens import Fatal, TokenChanged, TokenKeeper, Wait

__all__ = ["HELPER_KILL_WAIT", "Login"]

#: After SIGKILL of a helper past its deadline, look again this much later.
HELPER_KILL_WAIT = 5.0


class Login:
    """At most one helper at a time; its outcome goes back to the keeper, then to the callbacks."""

    def __init__(
        self,
        keeper: TokenKeeper,
        settings: Settings,
        credentials: Credentials,
        *,
        selector: selectors.BaseSelector,
        procs: Processes,
        wall: Callable[[], float],
        on_token: Callable[[str, float], None],
        on_fatal: Callable[[str], None],
        on_wait: Callable[[Wait], None] | None = None,
    ) -> None:
        self.keeper = keeper
        self.settings = settings
        self.credentials = credentials
        self.selector = selector
        self.procs = procs
        self.wall = wall
        self.on_token = on_token
        self.on_fatal = on_fatal
        self.on_wait = on_wait
        self.call: AuthCall | None = None
        self.log = get_logger("shardsync.supervisor")
        #: Helpers that answered and are exiting: reaped later, never waited for.
        self._exiting: set[int] = set()

    @property
    def alive(self) -> bool:
        """A helper process exists (running, or answered and not yet reaped)."""
        return self.call is not None or bool(self._exiting)

    def next_call_at(self, now: float) -> float | None:
        """When (on the loop's clock at ``now``) the keeper's next call is due; None while one runs."""
        if self.call is not None:
            return None
        wall = self.wall()
        at = self.keeper.next_at(wall)
        return None if at is None else now + max(0.0, at - wall)

    def start_call(self, now: float) -> None:
        """Start the call the keeper says is due, if any."""
        if self.call is not None:
            return
        action = self.keeper.due(self.wall())
        if action is None:
            return
        self.keeper.started(action, self.wall())
        self.log.info("token_request", action=type(action).__name__)
        self.call = self.procs.start_login(action, self.settings, self.credentials, now)
        self.selector.register(self.call.fd, selectors.EVENT_READ, self.on_readable)

    def kill_slow_helper(self, now: float) -> None:
        """The helper ran past its deadline: SIGKILL it (its pipe's EOF brings the failure)."""
        if self.call is None:
            return
        self.log.error("login_helper_timeout", action=type(self.call.action).__name__)
        self.call.kill()
        self.call.deadline = now + HELPER_KILL_WAIT

    def on_readable(self, mask: int) -> None:
        self.read()

    def read(self) -> None:
        """Take the helper's answer once it is complete and act on it."""
        call = self.call
        if call is None:
            return
        outcome = call.read()
        if outcome is None:
            return
        call.finish(self.selector)
        if not call.exited:
            # The helper has answered and is exiting; reaped() collects it then,
            # without ever blocking the loop on it.
            self._exiting.add(call.pid)
        self.call = None
        event = self.keeper.finished(call.action, outcome, self.wall())
        if isinstance(event, TokenChanged):
            register_secret(event.token)
            self.log.info("token_updated", expires_in=round(event.expires_at - self.wall(), 1),
                          action=type(call.action).__name__)
            self.on_token(event.token, event.expires_at)
        elif isinstance(event, Fatal):
            self.on_fatal(event.message)
        elif isinstance(event, Wait):
            loud = event.kind in ("captcha", "capped")
            (self.log.error if loud else self.log.warning)(
                "token_backoff", why=clip(event.why, MAX_TEXT), kind=event.kind,
                retry_in=round(event.until - self.wall(), 1))
            if self.on_wait is not None:
                self.on_wait(event)

    def reaped(self, pid: int) -> bool:
        """``pid`` was reaped: whether it was one of the helpers."""
        if self.call is not None and self.call.pid == pid:
            self.call.exited = True
            self.read()
            return True
        if pid in self._exiting:
            self._exiting.discard(pid)
            return True
        return False

    def kill(self) -> None:
        """SIGKILL the running helper, if any (shutdown)."""
        if self.call is not None:
            self.call.kill()
