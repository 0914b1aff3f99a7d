"""The parent: one single-threaded loop that forks, watches and restarts the shard workers.

The loop waits in one selector on the signal wakeup fd, every worker's pipe
and exit fd (pidfd), the login helper's pipe and the status socket; its
timeout is the nearest deadline of everything pending (restarts due,
heartbeat deadlines, kill deadlines, permits, token renewal, watchdog,
readiness).  Signal handlers do nothing but wake the loop; each signal has
its ``handle_<name>`` method, run from the loop.
"""

from __future__ import annotations

import contextlib
import os
import random
import selectors
import signal
import time
from collections.abc import Callable
from typing import Any

from shardsync import ipc
from shardsync.config import ConfigError, Settings, load_config, shard_key
from shardsync.credentials import Credentials
from shardsync.exitcodes import EX_BREAKER, EX_NOPERM, EX_OK
from shardsync.ipc import ShardState
from shardsync.logs import configure_logging, get_logger
from shardsync.secrets import fingerprint, register_secret
from shardsync.supervisor.authcall import AuthCall
from shardsync.supervisor.notify import Notifier
from shardsync.supervisor.permits import PermitGate
from shardsync.supervisor.policy import Escalate, Park, Restart, RestartPolicy, heartbeat_deadline
from shardsync.supervisor.shard import Shard
from shardsync.supervisor.status import ShardStatus, StatusServer, StatusSnapshot, summarize
from shardsync.supervisor.tokens import Fatal, TokenChanged, TokenKeeper, Wait
from shardsync.worker.boot import run_child
from shardsync.worker.options import WorkerOptions

#: Before its first heartbeat a worker gets this much longer than heartbeat_timeout
#: (imports, sink open, mirror preload).
FIRST_BEAT_GRACE = 10.0
#: A hung worker gets this long between SIGTERM and SIGKILL: its loop is wedged,
#: so a clean stop is unlikely and the shard is down meanwhile.
HANG_GRACE = 0.5
#: The loop wakes at least this often even when nothing is due.
MAX_SLEEP = 5.0
#: At most this many workers are forked per pass of the loop, so that starting
#: many shards (64 at boot, or a reload adding many) never stalls the status
#: endpoint, heartbeats and the watchdog for long: children compete for the CPU
#: from their first instant and make every further fork slower.
SPAWNS_PER_PASS = 4

SIGNALS = {
    signal.SIGTERM: "term",
    signal.SIGINT: "int",
    signal.SIGHUP: "hup",
    signal.SIGCHLD: "chld",
}

_SIGNAL_NAMES = {int(sig): name for sig, name in SIGNALS.items()}


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
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.credentials = credentials
        self.clock = clock
        self.wall = wall
        self.rng = rng or random.Random()
        self.notifier = notifier or Notifier.from_env()
        self.log = get_logger("shardsync.supervisor")
        self.pid = os.getpid()
        self.selector = selectors.DefaultSelector()
        self.shards: dict[int, Shard] = {}
        self.policy = RestartPolicy.from_settings(settings.supervisor, self.rng)
        self.permits = self._make_permits(settings)
        self.keeper = TokenKeeper(
            renew_before=settings.tradovate.renew_before,
            captcha_backoff=settings.tradovate.captcha_backoff,
            lockout_backoff=settings.tradovate.lockout_backoff,
            rng=self.rng,
        )
        self.auth_call: AuthCall | None = None
        self.status_server: StatusServer | None = None
        self.stopping = False
        self.exit_code = EX_OK
        self.ready = False
        self.started = clock()
        self.started_wall = wall()
        self.next_watchdog: float | None = None
        self._wakeup_r = -1
        self._last_status = ""
        self._exiting_helpers: set[int] = set()

    # --- the loop ---------------------------------------------------------------

    def run(self) -> int:
        self.init_signals()
        self.start_status_server()
        if self.notifier.watchdog_interval:
            self.next_watchdog = self.clock()
        self.log.info(
            "supervisor_started", divisor=self.settings.sync.divisor,
            remainders=list(self.settings.sync.remainders), pid=self.pid,
        )
        self.policy.set_shards(self.settings.sync.remainders)
        for remainder in self.settings.sync.remainders:
            self.add_shard(remainder, self.settings)
        try:
            while True:
                now = self.clock()
                self.run_timers(now)
                if self.stopping and not self.children_alive():
                    break
                timeout = max(0.0, min(self.next_deadline(now), now + MAX_SLEEP) - now)
                for key, mask in self.selector.select(timeout):
                    self.dispatch(key, mask)
                self.reap()
        finally:
            self.cleanup()
        self.log.info("supervisor_stopped", exit_code=self.exit_code)
        return self.exit_code

    def dispatch(self, key: selectors.SelectorKey, mask: int) -> None:
        data = key.data
        if data == "wakeup":
            self.handle_signals()
        elif isinstance(data, tuple) and data[0] == "out":
            shard = self.shards.get(data[1])
            if shard is not None:
                self.read_worker(shard)
        elif isinstance(data, tuple) and data[0] == "pidfd":
            self.reap()
        elif data == "auth":
            self.read_auth()
        elif self.status_server is not None and self.status_server.owns(key):
            self.status_server.handle(self.selector, key, mask)

    def children_alive(self) -> bool:
        return any(s.running for s in self.shards.values()) or self.auth_call is not None or bool(
            self._exiting_helpers
        )

    # --- signals ------------------------------------------------------------------

    def init_signals(self) -> None:
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup_r = read_fd
        self._wakeup_w = write_fd
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for sig in SIGNALS:
            # The handler only exists so that the signal is delivered; the
            # wakeup fd carries its number into the loop.
            signal.signal(sig, _wake_only)
        self.selector.register(read_fd, selectors.EVENT_READ, "wakeup")

    def handle_signals(self) -> None:
        try:
            data = os.read(self._wakeup_r, 4096)
        except BlockingIOError:
            return
        for number in data:
            name = _SIGNAL_NAMES.get(number)
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

    def options_for(self, settings: Settings) -> WorkerOptions:
        return WorkerOptions.from_settings(settings)

    def add_shard(self, remainder: int, settings: Settings) -> None:
        """A new shard; its worker is forked from the loop (run_timers), a few per pass."""
        shard = Shard(remainder, self.options_for(settings), shard_key(settings, remainder))
        shard.next_start_at = self.clock()
        self.shards[remainder] = shard

    def spawn(self, shard: Shard) -> None:
        """Fork the worker of ``shard``; the old one, if any, is already reaped."""
        assert shard.pid is None, "never two workers for one remainder"
        inbox_r, inbox_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            run_child(shard.options, shard.remainder, parent_pid=self.pid, inbox_fd=inbox_r, outbox_fd=out_w)
        os.close(inbox_r)
        os.close(out_w)
        os.set_blocking(out_r, False)
        os.set_blocking(inbox_w, False)
        now = self.clock()
        shard.pid = pid
        shard.inbox_w = inbox_w
        shard.outbox = ipc.Reader(out_r)
        shard.started_at = now
        shard.started_wall = self.wall()
        shard.phase = ShardState.STARTING
        shard.next_start_at = None
        shard.parked = False
        shard.then = "policy"
        self.selector.register(out_r, selectors.EVENT_READ, ("out", shard.remainder))
        try:
            shard.pidfd = os.pidfd_open(pid)
            self.selector.register(shard.pidfd, selectors.EVENT_READ, ("pidfd", shard.remainder))
        except OSError:
            shard.pidfd = None  # old kernel: SIGCHLD still wakes the loop
        self.policy.on_start(shard.remainder, now)
        if self.keeper.token is not None:
            shard.tell(ipc.Token(self.keeper.token, self.keeper.expires_at or 0.0))
        self.log.info("shard_started", shard=shard.remainder, worker_pid=pid, restarts=shard.restarts)

    def read_worker(self, shard: Shard) -> None:
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
            current = self.keeper.token
            if current is not None and fingerprint(current) != message.rejected:
                shard.tell(ipc.Token(current, self.keeper.expires_at or 0.0))
            else:
                self.log.warning("token_rejected_by_server", shard=shard.remainder)
                self.keeper.need_token(message.rejected, self.wall())
        elif isinstance(message, ipc.Hello) and (message.pid != shard.pid or message.remainder != shard.remainder):
            self.log.error("worker_hello_mismatch", shard=shard.remainder, hello=repr(message))

    def reap(self) -> None:
        """Collect every exited child (waitpid until none is left), decoding how it ended."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            shard = next((s for s in self.shards.values() if s.pid == pid), None)
            if shard is not None:
                self.on_exit(shard, status)
            elif self.auth_call is not None and self.auth_call.pid == pid:
                self.auth_call.exited = True
                self.read_auth()
            elif pid in self._exiting_helpers:
                self._exiting_helpers.discard(pid)
            else:
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
        if shard.then == "remove":
            del self.shards[shard.remainder]
            self.policy.forget(shard.remainder)
            self.policy.set_shards(self.shards)
            return
        if shard.then == "restart":
            self.policy.on_exit(shard.remainder, now, expected=True)
            self.spawn(shard)
            return
        decision = self.policy.on_exit(shard.remainder, now, expected=expected)
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
        elif isinstance(decision, Escalate):
            self.log.critical("global_breaker_tripped", reason=decision.reason)
            self.exit_code = EX_BREAKER
            self.begin_shutdown("global breaker")

    # --- timers -----------------------------------------------------------------------

    def run_timers(self, now: float) -> None:
        if not self.stopping:
            due = [s for s in self.shards.values()
                   if not s.running and s.next_start_at is not None and now >= s.next_start_at]
            # The rest stay due: the loop's next select has a zero timeout and comes back here.
            for shard in due[:SPAWNS_PER_PASS]:
                self.spawn(shard)
        for shard in self.shards.values():
            if not shard.running:
                continue
            if shard.kill_at is not None and now >= shard.kill_at:
                self.log.warning("shard_killed", shard=shard.remainder, worker_pid=shard.pid)
                shard.signal(signal.SIGKILL)
                shard.kill_at = None
            elif not shard.stop_requested and not shard.hung and now >= self.beat_deadline(shard):
                self.log.error("shard_hung", shard=shard.remainder, worker_pid=shard.pid,
                               last_heartbeat_age=None if shard.last_beat is None
                               else round(now - shard.last_beat, 3))
                shard.hung = True
                shard.signal(signal.SIGTERM)
                shard.kill_at = now + min(HANG_GRACE, self.settings.supervisor.shutdown_timeout)
        if not self.stopping:
            for remainder in self.permits.grant(now):
                holder = self.shards.get(remainder)
                if holder is not None and holder.running:
                    holder.tell(ipc.Permit())
            self.run_token(now)
        if self.auth_call is not None and now >= self.auth_call.deadline:
            self.log.error("login_helper_timeout", action=type(self.auth_call.action).__name__)
            self.auth_call.kill()
            self.auth_call.deadline = now + 5.0
        if self.next_watchdog is not None and now >= self.next_watchdog:
            self.notifier.watchdog()
            self.next_watchdog = now + (self.notifier.watchdog_interval or MAX_SLEEP)
        if not self.ready and not self.stopping:
            everyone_live = bool(self.shards) and all(s.ever_live for s in self.shards.values())
            if everyone_live or now - self.started >= self.settings.supervisor.start_timeout:
                self.ready = True
                self.log.info("ready", all_live=everyone_live, after=round(now - self.started, 3))
                self.notifier.ready(self.status_line())
        self.update_status_line()
        if self.status_server is not None:
            self.status_server.expire(now)

    def beat_deadline(self, shard: Shard) -> float:
        sup = self.settings.supervisor
        busy = shard.beat.busy_for if shard.beat is not None else 0.0
        return heartbeat_deadline(
            last_beat=shard.last_beat, started=shard.started_at, interval=sup.heartbeat_interval,
            timeout=sup.heartbeat_timeout, first_grace=sup.heartbeat_timeout + FIRST_BEAT_GRACE, busy_for=busy,
        )

    def next_deadline(self, now: float) -> float:
        deadlines: list[float] = [now + MAX_SLEEP]
        for shard in self.shards.values():
            if shard.running:
                if shard.kill_at is not None:
                    deadlines.append(shard.kill_at)
                elif not shard.stop_requested and not shard.hung:
                    deadlines.append(self.beat_deadline(shard))
            elif shard.next_start_at is not None and not self.stopping:
                deadlines.append(shard.next_start_at)
        permit_at = self.permits.next_at(now)
        if permit_at is not None:
            deadlines.append(permit_at)
        token_at = self.keeper.next_at()
        if token_at is not None and self.auth_call is None:
            deadlines.append(now + max(0.0, token_at - self.wall()))
        if self.auth_call is not None:
            deadlines.append(self.auth_call.deadline)
        if self.next_watchdog is not None:
            deadlines.append(self.next_watchdog)
        if not self.ready:
            deadlines.append(self.started + self.settings.supervisor.start_timeout)
        if self.status_server is not None and (at := self.status_server.next_deadline()) is not None:
            deadlines.append(at)
        return min(deadlines)

    # --- the token --------------------------------------------------------------------

    def run_token(self, now: float) -> None:
        if self.auth_call is not None:
            return
        action = self.keeper.due(self.wall())
        if action is None:
            return
        self.keeper.started(action, self.wall())
        self.log.info("token_request", action=type(action).__name__)
        self.auth_call = AuthCall.start(action, self.settings, self.credentials, now)
        self.selector.register(self.auth_call.fd, selectors.EVENT_READ, "auth")

    def read_auth(self) -> None:
        call = self.auth_call
        if call is None:
            return
        outcome = call.read()
        if outcome is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(call.fd)
        call.close()
        if not call.exited:
            # The helper has answered and is exiting; reap() collects it then,
            # without ever blocking the loop on it.
            self._exiting_helpers.add(call.pid)
        self.auth_call = None
        event = self.keeper.finished(call.action, outcome, self.wall())
        if isinstance(event, TokenChanged):
            register_secret(event.token)
            self.log.info("token_updated", expires_in=round(event.expires_at - self.wall(), 1),
                          action=type(call.action).__name__)
            for shard in self.shards.values():
                if shard.running:
                    shard.tell(ipc.Token(event.token, event.expires_at))
        elif isinstance(event, Fatal):
            self.log.critical("login_refused", reason=event.message)
            self.exit_code = EX_NOPERM
            self.begin_shutdown("login refused")
        elif isinstance(event, Wait):
            log = self.log.error if "captcha" in event.why.lower() else self.log.warning
            log("token_backoff", why=event.why, retry_in=round(event.until - self.wall(), 1))

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
        if self.auth_call is not None:
            self.auth_call.kill()

    def quick_stop(self, why: str) -> None:
        self.log.warning("quick_shutdown", why=why)
        for shard in self.shards.values():
            shard.signal(signal.SIGKILL)
        if self.auth_call is not None:
            self.auth_call.kill()

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
        now = self.clock()
        wanted = set(new.sync.remainders)
        added = sorted(wanted - set(self.shards))
        removed = sorted(set(self.shards) - wanted)
        changed = sorted(
            r for r in wanted & set(self.shards) if shard_key(new, r) != self.shards[r].key
        )
        self.settings = new
        if new.log != old.log:
            configure_logging(fmt=new.log.format, level=new.log.level, secrets=new.secrets())
        if new.supervisor != old.supervisor:
            self.policy = RestartPolicy.from_settings(new.supervisor, self.rng)
            self.permits = self._make_permits(new)
        self.policy.set_shards(wanted)
        for remainder in removed:
            shard = self.shards[remainder]
            if shard.running:
                shard.then = "remove"
                shard.request_stop(now, new.supervisor.shutdown_timeout)
            else:
                del self.shards[remainder]
                self.policy.forget(remainder)
        for remainder in changed:
            shard = self.shards[remainder]
            shard.options = self.options_for(new)
            shard.key = shard_key(new, remainder)
            if shard.running:
                shard.then = "restart"
                shard.request_stop(now, new.supervisor.shutdown_timeout)
            else:
                shard.next_start_at = now
        for remainder in added:
            self.add_shard(remainder, new)
        if new.status != old.status:
            self.stop_status_server()
            self.start_status_server()
        self.log.info("reloaded", added=added, removed=removed, restarted=changed)
        self.notifier.ready(self.status_line())

    def _make_permits(self, settings: Settings) -> PermitGate:
        return PermitGate(
            max_concurrent=settings.supervisor.max_concurrent_connects,
            spacing=settings.supervisor.connect_spacing,
            hold_max=2 * settings.tradovate.handshake_timeout,
        )

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
        shards = []
        for shard in sorted(self.shards.values(), key=lambda s: s.remainder):
            beat = shard.beat
            shards.append(ShardStatus(
                remainder=shard.remainder,
                state=shard.state,
                pid=shard.pid,
                uptime=round(now - shard.started_at, 3) if shard.running else None,
                restarts=shard.restarts,
                parked=shard.parked,
                last_heartbeat_age=None if shard.last_beat is None else round(now - shard.last_beat, 3),
                events_per_s=round(shard.events_per_s, 1),
                events=beat.events if beat else 0,
                entities=beat.entities if beat else 0,
                reconnects=beat.reconnects if beat else 0,
                last_error=shard.last_error,
                next_restart_in=None if shard.running or shard.next_start_at is None
                else round(max(0.0, shard.next_start_at - now), 3),
            ))
        return StatusSnapshot(
            pid=self.pid, started_at=self.started_wall, uptime=round(now - self.started, 3), ready=self.ready,
            divisor=self.settings.sync.divisor, shards=tuple(shards),
        )

    def status_line(self) -> str:
        # Runs on every pass of the loop: counts only, not a whole snapshot.
        summary = summarize((s.state, s.parked) for s in self.shards.values())
        others = ", ".join(f"{n} {state}" for state, n in sorted(summary.items())
                           if state not in ("total", "live", "backoff", "parked") and n)
        line = f"{summary['live']}/{summary['total']} live, {summary['backoff']} backoff, {summary['parked']} parked"
        return f"{line}, {others}" if others else line

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
        if self.auth_call is not None:
            self.auth_call.kill()
        # Whatever is left is reaped so that nothing lingers as a zombie.
        deadline = self.clock() + 5.0
        while self.clock() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.01)
        self.stop_status_server()
        signal.set_wakeup_fd(-1)
        self.selector.close()


def _wake_only(signum: int, frame: Any) -> None:
    """Signal handler: the wakeup fd already carries the signal into the loop."""


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with {code}"
