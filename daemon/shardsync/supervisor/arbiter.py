"""The parent: one single-threaded loop that forks, watches and restarts the shard workers.

The loop waits in one selector on the signal wakeup fd, every worker's pipe
and exit fd (pidfd), the login helper's pipe and the status socket; each
key's data is the handler to call.  Its timeout is the nearest deadline of
the one timer list (``timers.py``).  Signal handlers do nothing but wake the
loop; each signal has its ``handle_<name>`` method, run from the loop.

Decisions are made elsewhere and carried out here: restarts (``policy.py``),
hangs (``hang.py``), readiness (``readiness.py``), the token and a worker's
401 (``tokens.py``), permits (``permits.py``) and reloads (``reload.py``).
Every process call goes through an injected :class:`Processes`, so unit
tests run this loop in-process with fakes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import selectors
import signal
import time
from collections.abc import Callable
from typing import TypedDict

from shardsync import ipc
from shardsync.config import ConfigError, Settings, load_config
from shardsync.credentials import Credentials
from shardsync.exitcodes import EX_BREAKER, EX_NOPERM, EX_OK
from shardsync.ipc import ShardState
from shardsync.logs import configure_logging, get_logger
from shardsync.supervisor import reload as planner
from shardsync.supervisor.hang import Hung, Kill, Limits, Verdict
from shardsync.supervisor.httpd import StatusServer
from shardsync.supervisor.login import Login
from shardsync.supervisor.notify import Notifier
from shardsync.supervisor.options import worker_options
from shardsync.supervisor.permits import PermitGate
from shardsync.supervisor.policy import Escalate, Park, Restart, RestartPolicy
from shardsync.supervisor.processes import Processes
from shardsync.supervisor.readiness import Ready
from shardsync.supervisor.reload import Then
from shardsync.supervisor.shard import Shard
from shardsync.supervisor.signals import NAMES, WakeupPipe
from shardsync.supervisor.status import StatusSnapshot, status_line, summarize
from shardsync.supervisor.timers import (
    LoginDeadline,
    LoginDue,
    PermitGrants,
    Readiness,
    RestartsDue,
    StatusExpiry,
    TimerList,
    Watchdog,
    WorkerDeadlines,
)
from shardsync.supervisor.tokens import Resend, TokenKeeper
from shardsync.worker.options import WorkerOptions

#: The loop wakes at least this often even when nothing is due.
MAX_SLEEP = 5.0


class Arbiter:
    """Owns the shard table, the token and the loop; ``run()`` returns the exit code."""

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
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.clock = clock
        self.wall = wall
        self.rng = rng or random.Random()
        self.notifier = notifier or Notifier.from_env()
        self.procs = processes or Processes()
        self.selector = selector or selectors.DefaultSelector()
        self.log = get_logger("shardsync.supervisor")
        self.pid = os.getpid()
        self.shards: dict[int, Shard] = {}
        self.policy = RestartPolicy.from_settings(settings.supervisor, self.rng)
        self.permits = PermitGate(**_permit_limits(settings))
        self.limits = Limits.from_settings(settings.supervisor)
        keeper = TokenKeeper(
            renew_before=settings.tradovate.renew_before,
            captcha_backoff=settings.tradovate.captcha_backoff,
            lockout_backoff=settings.tradovate.lockout_backoff,
            rng=self.rng,
        )
        self.login = Login(keeper, settings, credentials, selector=self.selector, procs=self.procs, wall=wall,
                           on_token=self.hand_out_token, on_fatal=self.login_refused)
        self.status_server: StatusServer | None = None
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
        self.timers = TimerList([
            RestartsDue(self), WorkerDeadlines(self), PermitGrants(self), LoginDue(self), LoginDeadline(self),
            Watchdog(self.notifier, clock()), Readiness(self), StatusExpiry(self),
        ])

    # --- the loop ---------------------------------------------------------------

    def run(self) -> int:
        self.start()
        try:
            while self.step():
                pass
        finally:
            self.cleanup()
        self.log.info("supervisor_stopped", exit_code=self.exit_code)
        return self.exit_code

    def start(self) -> None:
        """Everything before the first pass: signals, the status listener, the shard table."""
        if self._os_signals:
            self._wakeup = WakeupPipe()
            self.selector.register(self._wakeup.fd, selectors.EVENT_READ, self.on_wakeup)
        self.start_status_server()
        self.log.info(
            "supervisor_started", divisor=self.settings.sync.divisor,
            remainders=list(self.settings.sync.remainders), pid=self.pid,
        )
        self.policy.set_shards(self.settings.sync.remainders)
        options = worker_options(self.settings)
        for remainder in self.settings.sync.remainders:
            self.add_shard(remainder, options)

    def step(self) -> bool:
        """One pass: signals, due timers, one wait in the selector, reaping; False once everything stopped."""
        self.handle_signals()
        now = self.clock()
        self.timers.run_due(now)
        self.update_status_line()
        if self.stopping and not self.children_alive():
            return False
        for key, mask in self.selector.select(self.timers.timeout(now, MAX_SLEEP)):
            key.data(mask)
        self.reap()
        return True

    def children_alive(self) -> bool:
        return any(s.running for s in self.shards.values()) or self.login.alive

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

    # --- workers ---------------------------------------------------------------------

    def add_shard(self, remainder: int, options: WorkerOptions) -> Shard:
        """A new shard; its worker is forked from the loop (RestartsDue), a few per pass."""
        shard = Shard(remainder, options, self.procs)
        shard.next_start_at = self.clock()
        self.shards[remainder] = shard
        return shard

    def spawn(self, shard: Shard) -> None:
        now = self.clock()
        pid = shard.start(now=now, wall=self.wall(), parent_pid=self.pid, selector=self.selector,
                          on_output=functools.partial(self.read_worker, shard), on_exit=self.on_exit_fd)
        self.policy.on_start(shard.remainder, now)
        token, expires_at = self.login.keeper.token, self.login.keeper.expires_at
        if token is not None:
            shard.tell(ipc.Token(token, expires_at or 0.0))
        self.log.info("shard_started", shard=shard.remainder, worker_pid=pid, restarts=shard.restarts)

    def on_exit_fd(self, mask: int) -> None:
        self.reap()

    def read_worker(self, shard: Shard, mask: int = selectors.EVENT_READ) -> None:
        if shard.outbox is None:
            return  # reaped earlier in this same wakeup; its pipe is closed
        try:
            messages = shard.outbox.read()
        except ipc.IPCError as exc:
            self.log.error("worker_pipe_corrupt", shard=shard.remainder, error=str(exc))
            shard.signal(signal.SIGKILL)
            return
        now = self.clock()
        for message in messages:
            self.on_message(shard, message, now)
        if shard.outbox.eof:
            # The worker is exiting; its pidfd or SIGCHLD brings the exit.
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(shard.outbox.fd)

    def on_message(self, shard: Shard, message: ipc.Message, now: float) -> None:
        if isinstance(message, ipc.Heartbeat):
            was_live = shard.ever_live
            shard.on_beat(message, now)
            self.permits.report(shard.remainder, message.state)
            if shard.ever_live and not was_live:
                self.log.info("shard_live", shard=shard.remainder, entities=message.entities)
        elif isinstance(message, ipc.NeedPermit):
            self.permits.request(shard.remainder, now)
        elif isinstance(message, ipc.NeedToken):
            answer = self.login.keeper.on_rejected(message.rejected, self.wall())
            if isinstance(answer, Resend):
                shard.tell(ipc.Token(answer.token, answer.expires_at))
            else:
                self.log.warning("token_rejected_by_server", shard=shard.remainder)
        elif isinstance(message, ipc.Hello) and (message.pid != shard.pid or message.remainder != shard.remainder):
            self.log.error("worker_hello_mismatch", shard=shard.remainder, hello=repr(message))

    def reap(self) -> None:
        """Collect every exited child (waitpid until none is left), decoding how it ended."""
        while True:
            try:
                pid, status = self.procs.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            shard = next((s for s in self.shards.values() if s.pid == pid), None)
            if shard is not None:
                self.on_exit(shard, status)
            elif not self.login.reaped(pid):
                self.log.warning("unknown_child_reaped", child_pid=pid, status=_describe(status))

    def on_exit(self, shard: Shard, status: int) -> None:
        now = self.clock()
        expected = shard.stop_requested
        hung = shard.hung
        for message in shard.detach(self.selector):
            self.on_message(shard, message, now)
        shard.beat = None
        self.permits.forget(shard.remainder)
        how = _describe(status)
        uptime = round(now - shard.started_at, 3)
        if expected:
            self.log.info("shard_stopped", shard=shard.remainder, status=how, uptime=uptime)
        else:
            self.log.warning("shard_exited", shard=shard.remainder, status=how, uptime=uptime, hung=hung)
            shard.last_error = f"worker {how}" + (" (hung)" if hung else "")
        if self.stopping:
            shard.phase = ShardState.STOPPED
            return
        then, shard.then = shard.then, Then.POLICY
        if then is Then.REMOVE:
            del self.shards[shard.remainder]
            self.policy.forget(shard.remainder)
            self.policy.set_shards(self.shards)
            return
        if then is Then.RESTART:
            self.policy.on_exit(shard.remainder, now, expected=True)
            shard.phase = ShardState.STARTING
            shard.next_start_at = now
            return
        self.apply_policy(shard, self.policy.on_exit(shard.remainder, now, expected=expected), now)

    def apply_policy(self, shard: Shard, decision: Restart | Park | Escalate | None, now: float) -> None:
        if decision is None:
            shard.phase = ShardState.EXITED
            return
        shard.restarts += 1
        if isinstance(decision, Restart):
            shard.phase = ShardState.BACKOFF
            shard.next_start_at = decision.at
            self.log.info("shard_restart_scheduled", shard=shard.remainder, delay=round(decision.delay, 3),
                          attempt=decision.attempt)
        elif isinstance(decision, Park):
            shard.phase = ShardState.PARKED
            shard.parked = True
            shard.next_start_at = decision.until
            self.log.error("shard_parked", shard=shard.remainder, reason=decision.reason,
                           retry_in=round(decision.until - now, 1))
        else:
            self.log.critical("global_breaker_tripped", reason=decision.reason)
            self.exit_code = EX_BREAKER
            self.begin_shutdown("global breaker")

    def carry_out(self, shard: Shard, verdict: Verdict) -> None:
        """A hang verdict for a running worker: SIGTERM when judged hung, SIGKILL once its grace is over."""
        if isinstance(verdict, Kill):
            self.log.warning("shard_killed", shard=shard.remainder, worker_pid=shard.pid)
            shard.signal(signal.SIGKILL)
            shard.kill_at = None
        elif isinstance(verdict, Hung):
            age = None if verdict.last_beat_age is None else round(verdict.last_beat_age, 3)
            self.log.error("shard_hung", shard=shard.remainder, worker_pid=shard.pid, last_heartbeat_age=age)
            shard.hung = True
            shard.signal(signal.SIGTERM)
            shard.kill_at = verdict.kill_at

    def grant_permits(self, now: float) -> None:
        for remainder in self.permits.grant(now):
            holder = self.shards.get(remainder)
            if holder is not None and holder.running:
                holder.tell(ipc.Permit())

    # --- the token --------------------------------------------------------------------

    def hand_out_token(self, token: str, expires_at: float) -> None:
        for shard in self.shards.values():
            if shard.running:
                shard.tell(ipc.Token(token, expires_at))

    def login_refused(self, message: str) -> None:
        self.log.critical("login_refused", reason=message)
        self.exit_code = EX_NOPERM
        self.begin_shutdown("login refused")

    # --- stop and reload --------------------------------------------------------------

    def begin_shutdown(self, why: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.log.info("shutdown", why=why, timeout=self.settings.supervisor.shutdown_timeout)
        self.notifier.stopping(f"stopping: {why}")
        now = self.clock()
        for shard in self.shards.values():
            shard.request_stop(now, self.settings.supervisor.shutdown_timeout)
        self.login.kill()

    def quick_stop(self, why: str) -> None:
        self.log.warning("quick_shutdown", why=why)
        for shard in self.shards.values():
            shard.signal(signal.SIGKILL)
        self.login.kill()

    def reload(self) -> None:
        self.notifier.reloading("reloading configuration")
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            for line in exc.lines:
                self.log.error("reload_rejected", error=line)
            self.notifier.ready(self.status_line())
            return
        old = self.settings
        plan = planner.plan({r: s.row() for r, s in self.shards.items()}, old, new)
        self.settings = self.login.settings = new
        if plan.logging:
            configure_logging(fmt=new.log.format, level=new.log.level, secrets=new.secrets())
        if plan.supervisor:
            self.policy = RestartPolicy.from_settings(new.supervisor, self.rng)
            self.limits = Limits.from_settings(new.supervisor)
        self.permits.reconfigure(**_permit_limits(new))
        self.policy.set_shards(new.sync.remainders)
        now = self.clock()
        for step in plan.steps:
            self.carry_out_step(step, now)
        if plan.status:
            self.stop_status_server()
            self.start_status_server()
        self.log.info("reloaded", added=plan.added, removed=plan.removed, restarted=plan.restarted)
        self.notifier.ready(self.status_line())

    def carry_out_step(self, step: planner.Step, now: float) -> None:
        shard = self.shards.get(step.remainder)
        if step.row is None:
            if shard is not None:
                del self.shards[step.remainder]
                self.policy.forget(step.remainder)
            return
        if shard is None:
            shard = self.add_shard(step.remainder, step.row.options)
        shard.options, shard.then = step.row.options, step.row.then
        if step.stop_worker:
            shard.request_stop(now, self.settings.supervisor.shutdown_timeout)
        if step.start_now:
            shard.next_start_at = now

    # --- status ------------------------------------------------------------------------

    def start_status_server(self) -> None:
        address = self.settings.status.address
        if address is None:
            return
        try:
            self.status_server = StatusServer(address, self.snapshot)
        except OSError as exc:
            self.log.error("status_listen_failed", listen=self.settings.status.listen, error=str(exc))
            return
        self.status_server.register(self.selector)
        self.log.info("status_listening", host=address[0], port=self.status_server.port)

    def stop_status_server(self) -> None:
        if self.status_server is not None:
            self.status_server.close()
            self.status_server = None

    def snapshot(self) -> StatusSnapshot:
        now = self.clock()
        return StatusSnapshot(
            pid=self.pid, started_at=self.started_wall, uptime=round(now - self.started, 3), ready=self.ready,
            divisor=self.settings.sync.divisor,
            shards=tuple(s.status(now) for s in sorted(self.shards.values(), key=lambda s: s.remainder)),
        )

    def all_live(self) -> bool:
        """Every configured shard has been live at least once."""
        return bool(self.shards) and all(s.ever_live for s in self.shards.values())

    def become_ready(self, ready: Ready) -> None:
        self.ready = True
        self.log.info("ready", all_live=ready.all_live, after=round(ready.after, 3))
        self.notifier.ready(self.status_line())

    def status_line(self) -> str:
        # Runs on every pass of the loop: counts only, not a whole snapshot.
        return status_line(summarize((s.state, s.parked) for s in self.shards.values()))

    def update_status_line(self) -> None:
        line = self.status_line()
        if line != self._last_status:
            self._last_status = line
            self.notifier.status(line)

    # --- teardown ------------------------------------------------------------------------

    def cleanup(self) -> None:
        for shard in self.shards.values():
            if shard.running:
                shard.signal(signal.SIGKILL)
        self.login.kill()
        # Whatever is left is reaped so that nothing lingers as a zombie (at most ~5 s).
        for _ in range(500):
            try:
                pid, _ = self.procs.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.01)
        self.stop_status_server()
        if self._wakeup is not None:
            self._wakeup.close()
        self.selector.close()


class _PermitLimits(TypedDict):
    max_concurrent: int
    spacing: float
    hold_max: float


def _permit_limits(settings: Settings) -> _PermitLimits:
    return {
        "max_concurrent": settings.supervisor.max_concurrent_connects,
        "spacing": settings.supervisor.connect_spacing,
        "hold_max": 2 * settings.tradovate.handshake_timeout,
    }


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with {code}"
