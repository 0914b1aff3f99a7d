"""The parent: one single-threaded loop that forks, watches and restarts the shard workers.

The loop waits in one selector on the signal wakeup fd, every worker's pipe
and exit fd (pidfd), the login helper's pipe and the status socket; each
key's data is the handler to call.  Its timeout is the nearest deadline of
the one timer list (``timers.py``).  Signal handlers do nothing but wake the
loop; each signal has its ``handle_<name>`` method, run from the loop.

The arbiter orchestrates: each worker's lifetime is the shard table's
(``table.py``), the token's the login's (``login.py``); decisions come from
``policy.py``, ``hang.py``, ``readiness.py``, ``tokens.py``, ``permits.py``
and ``reload.py``.  Every process call goes through an injected
:class:`Processes`, so unit tests run this loop in-process with fakes.
"""

from __future__ import annotations

import os
import random
import selectors
import time
from collections.abc import Callable
from dataclasses import replace

from shardsync.config import ConfigError, Settings, load_config
from shardsync.credentials import Credentials
from shardsync.exitcodes import EX_BREAKER, EX_ERROR, EX_NOPERM, EX_OK
from shardsync.logs import configure_logging, get_logger
from shardsync.ordinal import HostSlot
from shardsync.supervisor import reload as planner
from shardsync.supervisor import timers
from shardsync.supervisor.httpd import StatusServer
from shardsync.supervisor.listener import StatusBindError, StatusListener
from shardsync.supervisor.login import Login
from shardsync.supervisor.notify import Notifier
from shardsync.supervisor.options import worker_options
from shardsync.supervisor.processes import Processes, describe
from shardsync.supervisor.readiness import Ready
from shardsync.supervisor.resharding import Resharding, begin, prepare
from shardsync.supervisor.retire import FILE_KINDS, removed_by_reload, stale_files
from shardsync.supervisor.retirer import Retirer
from shardsync.supervisor.shard import Shard
from shardsync.supervisor.shardkey import ShardKey
from shardsync.supervisor.signals import NAMES, WakeupPipe
from shardsync.supervisor.status import ShardStatus, StatusSnapshot
from shardsync.supervisor.table import ShardTable
from shardsync.supervisor.tokens import TokenKeeper, Wait

#: The loop wakes at least this often even when nothing is due.
MAX_SLEEP = 5.0


class Arbiter:
    """Owns the loop, signals, shutdown, reload and status; ``run()`` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        config_path: str,
        credentials: Credentials,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        notifier: Notifier | None = None,
        processes: Processes | None = None,
        selector: selectors.BaseSelector | None = None,
        os_signals: bool = True,
        host: HostSlot | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        #: This host's slot (--host-index/--host-count): re-applied to every reloaded file.
        self.host = host
        self.clock = clock
        self.wall = wall
        self.rng = rng or random.Random()
        self.notifier = notifier or Notifier.from_env()
        self.procs = processes or Processes()
        self.selector = selector or selectors.DefaultSelector()
        self.log = get_logger("shardsync.supervisor")
        self.pid = os.getpid()
        keeper = TokenKeeper(
            renew_before=settings.tradovate.renew_before,
            captcha_backoff=settings.tradovate.captcha_backoff,
            lockout_backoff=settings.tradovate.lockout_backoff,
            rng=self.rng,
        )
        self.login = Login(keeper, settings, credentials, selector=self.selector, procs=self.procs, wall=wall,
                           on_token=self.hand_out_token, on_fatal=self.login_refused,
                           on_wait=self.login_waited)
        self.table = ShardTable(settings, procs=self.procs, selector=self.selector, clock=clock, wall=wall,
                                rng=self.rng, parent_pid=self.pid, login=self.login, reap=self.reap,
                                on_breaker=self.breaker_tripped)
        self.retirer = Retirer(self.selector, self.procs.start_retire)
        #: The resharding in progress, or the last one (for /status); None before any.
        self.resharding: Resharding | None = None
        self.listener = StatusListener(self.snapshot, self.selector, config_path=config_path, pid=self.pid,
                                       started_at=wall())
        self.stopping = False
        self.exit_code = EX_OK
        self.ready = False
        self.started = clock()
        self.started_wall = wall()
        #: Signal numbers waiting for their handle_<name> (the wakeup fd feeds it; tests push to it).
        self.signal_queue: list[int] = []
        self._os_signals = os_signals
        self._wakeup: WakeupPipe | None = None
        self._last_status = ""
        self.timers = timers.TimerList([
            timers.RestartsDue(self), timers.WorkerDeadlines(self), timers.PermitGrants(self),
            timers.LoginDue(self), timers.LoginDeadline(self), timers.Watchdog(self.notifier, clock()),
            timers.Readiness(self), timers.StatusExpiry(self), timers.RetireDue(self),
            timers.ReshardDue(self),
        ])

    @property
    def status_server(self) -> StatusServer | None:
        """The bound status listener, if any."""
        return self.listener.server

    @property
    def shards(self) -> dict[int, Shard]:
        """The configured divisor's shards by remainder (``table.shards`` has every divisor's)."""
        divisor = self.settings.sync.divisor
        return {key.remainder: s for key, s in self.table.shards.items() if key.divisor == divisor}

    # --- the loop ---------------------------------------------------------------

    def run(self) -> int:
        try:
            self.start()
        except StatusBindError as exc:
            # Before any fork: a daemon whose /metrics and /healthz silently vanish is worse than none.
            self.log.critical("status_listen_failed", listen=exc.listen, error=exc.reason, message=str(exc))
            self.exit_code = EX_ERROR
            self.cleanup()
            return self.exit_code
        try:
            while self.step():
                pass
        finally:
            self.cleanup()
        self.log.info("supervisor_stopped", exit_code=self.exit_code)
        return self.exit_code

    def start(self) -> None:
        """Everything before the first pass: the status listener (StatusBindError), signals, the shard table."""
        self.listener.open(self.settings)
        if self._os_signals:
            self._wakeup = WakeupPipe()
            self.selector.register(self._wakeup.fd, selectors.EVENT_READ, self.on_wakeup)
        self.log.info(
            "supervisor_started", divisor=self.settings.sync.divisor,
            remainders=list(self.settings.sync.remainders), pid=self.pid,
        )
        self.table.policy.set_shards(self.table.wanted())
        options = worker_options(self.settings)
        for remainder in self.settings.sync.remainders:
            self.table.add(remainder, options)
        self.retirer.add(stale_files(_listing(self.settings), self.settings))

    def step(self) -> bool:
        """One pass: signals, due timers, one wait in the selector, reaping; False once everything stopped."""
        self.handle_signals()
        timeout = self.timers.run_due(self.clock(), MAX_SLEEP)
        self.update_status_line()
        if self.stopping and not self.children_alive():
            return False
        for key, mask in self.selector.select(timeout):
            key.data(mask)
        self.reap()
        return True

    def children_alive(self) -> bool:
        return self.table.any_running() or self.login.alive or self.retirer.alive

    # --- signals ------------------------------------------------------------------

    def on_wakeup(self, mask: int) -> None:
        if self._wakeup is not None:
            self.signal_queue.extend(self._wakeup.drain())
        self.handle_signals()

    def handle_signals(self) -> None:
        while self.signal_queue:
            name = NAMES.get(self.signal_queue.pop(0))
            if name is not None:
                getattr(self, f"handle_{name}")()

    def handle_term(self) -> None:
        if self.stopping:
            self.quick_stop("second signal")
        else:
            self.begin_shutdown("SIGTERM")

    def handle_int(self) -> None:
        if self.stopping:
            self.quick_stop("second signal")
        else:
            self.begin_shutdown("SIGINT")

    def handle_hup(self) -> None:
        if not self.stopping:
            self.reload()

    def handle_chld(self) -> None:
        self.reap()

    # --- children and the token --------------------------------------------------------------------

    def reap(self) -> None:
        """Collect every exited child (waitpid until none is left): workers, login helpers, strays."""
        while True:
            try:
                pid, status = self.procs.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if not self.table.exited(pid, status) and not self.login.reaped(pid) and not self.retirer.reaped(pid):
                self.log.warning("unknown_child_reaped", child_pid=pid, status=describe(status))

    def hand_out_token(self, token: str, expires_at: float) -> None:
        self.table.hand_out_token(token, expires_at)

    def login_waited(self, wait: Wait) -> None:
        self.table.login_waited(wait)

    def login_refused(self, message: str) -> None:
        self.log.critical("login_refused", reason=message)
        self.exit_code = EX_NOPERM
        self.begin_shutdown("login refused")

    def breaker_tripped(self, why: str) -> None:
        self.exit_code = EX_BREAKER
        self.begin_shutdown(why)

    # --- stop and reload --------------------------------------------------------------

    def begin_shutdown(self, why: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.log.info("shutdown", why=why, timeout=self.settings.supervisor.shutdown_timeout)
        self.notifier.stopping(f"stopping: {why}")
        self.table.stop_all(self.clock())
        self.login.kill()
        self.retirer.kill()

    def quick_stop(self, why: str) -> None:
        self.log.warning("quick_shutdown", why=why)
        self.table.kill_all()
        self.login.kill()

    def reload(self) -> None:
        self.notifier.reloading("reloading configuration")
        try:
            new = load_config(self.config_path, host=self.host)
        except ConfigError as exc:
            for line in exc.lines:
                self.log.error("reload_rejected", error=line)
            self.notifier.ready(self.status_line())
            return
        if self.resharding is not None and self.resharding.active:
            # Never a half state: the plan in progress was made for the table it started from.
            self.refuse_reload(f"{self.resharding.status_line()}; send SIGHUP again once it has ended")
            return
        reshard = prepare(self.table, new)
        if isinstance(reshard, str):
            self.refuse_reload(reshard)
            return
        plan = planner.plan({r: s.row() for r, s in self.shards.items()}, self.settings, new)
        old, self.settings = self.settings, new
        self.login.settings = new
        if plan.logging:
            configure_logging(fmt=new.log.format, level=new.log.level, secrets=new.secrets())
        self.table.configure(new)
        # An operator acted: shards parked for a refusal the server keeps giving get their chance again.
        self.table.budget.operator_acted()
        now = self.clock()
        self.listener.reconfigure(old, new)
        if reshard is not None:
            # Make before break: old shards stop move by move, once their replacements are live.
            self.resharding = begin(reshard, worker_options(new), now)
            self.advance_reshard(now)
            self.log.info("reloaded", resharding=self.resharding.status_line())
            self.notifier.ready(self.status_line())
            return
        for step in plan.steps:
            self.table.carry_out_step(step, now)
        # Once every new shard is live, what the new config no longer owns is marked retired.
        self.retirer.add(removed_by_reload(old, new))
        self.retirer.add(stale_files(_listing(new), new))
        self.log.info("reloaded", added=plan.added, removed=plan.removed, restarted=plan.restarted)
        self.notifier.ready(self.status_line())

    def refuse_reload(self, why: str) -> None:
        self.log.warning("reload_refused", why=why)
        self.notifier.ready(self.status_line())

    def advance_reshard(self, now: float) -> None:
        """Carry the resharding on; old shards whose worker is gone are retired."""
        if self.resharding is None:
            return
        was_active = self.resharding.active
        self.retirer.add_ready(self.resharding.advance(self.table, now))
        if was_active and not self.resharding.active and not self.resharding.reasons:
            # Whatever else the old divisor left in the state directory (gated: every shard live).
            self.retirer.add(stale_files(_listing(self.settings), self.settings))

    # --- status ------------------------------------------------------------------------

    def snapshot(self) -> StatusSnapshot:
        now, wall = self.clock(), self.wall()
        keeper = self.login.keeper
        return StatusSnapshot(
            pid=self.pid, started_at=self.started_wall, uptime=round(now - self.started, 3), ready=self.ready,
            divisor=self.settings.sync.divisor,
            shards=self.shard_statuses(now, wall),
            token_expires_in=None if keeper.token is None or keeper.expires_at is None
            else round(keeper.expires_at - wall, 3),
            token_renew_margin=keeper.renew_margin,
            budget=self.table.budget.status(now),
            login=keeper.status(wall),
            reshard=None if self.resharding is None else self.resharding.status(now),
        )

    def shard_statuses(self, now: float, wall: float) -> tuple[ShardStatus, ...]:
        statuses = self.table.statuses(now, wall)
        plan = self.resharding
        if plan is None or not plan.active:
            return statuses
        return tuple(replace(s, reshard=plan.role(ShardKey(s.divisor, s.remainder))) for s in statuses)

    def become_ready(self, ready: Ready) -> None:
        self.ready = True
        self.log.info("ready", all_live=ready.all_live, after=round(ready.after, 3))
        self.notifier.ready(self.status_line())

    def status_line(self) -> str:
        line = self.table.status_line()
        if self.resharding is not None and self.resharding.active:
            line += f"; {self.resharding.status_line()}"
        return line

    def update_status_line(self) -> None:
        line = self.status_line()
        if line != self._last_status:
            self._last_status = line
            self.notifier.status(line)

    # --- teardown ------------------------------------------------------------------------

    def cleanup(self) -> None:
        self.table.kill_all()
        self.login.kill()
        self.retirer.kill()
        # Whatever is left is reaped so that nothing lingers as a zombie (at most ~5 s).
        for _ in range(500):
            try:
                pid, _ = self.procs.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.01)
        self.listener.close()
        if self._wakeup is not None:
            self._wakeup.close()
        self.selector.close()


def _listing(settings: Settings) -> list[str]:
    """The names in a sqlite/jsonl state directory (none for other sinks, or when it does not exist yet)."""
    if settings.sink.kind not in FILE_KINDS:
        return []
    try:
        return os.listdir(settings.sink.path)
    except OSError:
        return []
