"""The shard table: every shard of this host and the lifetime of its worker.

Forks (through :meth:`Shard.start`), the worker's messages, its exit and what
follows it (the restart policy's decision, or the reload's), hang verdicts
and reload steps are carried out here; the decisions come from ``policy.py``,
``hang.py``, ``tokens.py``, ``permits.py`` and ``reload.py``.  The arbiter
owns the loop and calls in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
import selectors
import signal
from collections.abc import Callable

from shardsync import ipc
from shardsync.clip import clip
from shardsync.config import Settings
from shardsync.ipc import MAX_TEXT, ShardState
from shardsync.logs import get_logger
from shardsync.supervisor import budget as api
from shardsync.supervisor.budget import Budget
from shardsync.supervisor.hang import Hung, Kill, Limits, Verdict
from shardsync.supervisor.login import Login
from shardsync.supervisor.permits import PermitGate
from shardsync.supervisor.policy import Escalate, Park, Restart, RestartPolicy
from shardsync.supervisor.processes import Processes, describe
from shardsync.supervisor.reload import Step, Then
from shardsync.supervisor.shard import Shard
from shardsync.supervisor.shardkey import ShardKey
from shardsync.supervisor.status import ShardStatus, status_line, summarize
from shardsync.supervisor.tokens import Resend, Wait
from shardsync.worker.options import WorkerOptions

__all__ = ["ShardTable"]

#: States a worker reaches only after authorize accepted its token.
_AUTHORIZED = frozenset({ShardState.SYNCING, ShardState.LIVE})


class ShardTable:
    """The shards by (divisor, remainder), their restart policy, connect permits and heartbeat limits.

    Keyed by divisor too, because while a reshard runs (``resharding.py``) shard r of
    the old divisor and shard r of the new one are two shards side by side.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        procs: Processes,
        selector: selectors.BaseSelector,
        clock: Callable[[], float],
        wall: Callable[[], float],
        rng: random.Random,
        parent_pid: int,
        login: Login,
        reap: Callable[[], None],
        on_breaker: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.procs = procs
        self.selector = selector
        self.clock = clock
        self.wall = wall
        self.rng = rng
        self.login = login
        self._reap = reap
        self.on_breaker = on_breaker
        self.log = get_logger("shardsync.supervisor")
        self.pid = parent_pid
        self.shards: dict[ShardKey, Shard] = {}
        self.policy = RestartPolicy.from_settings(settings.supervisor, rng)
        self.permits = PermitGate.from_settings(settings)
        self.limits = Limits.from_settings(settings.supervisor)
        self.budget = Budget(lockout_backoff=settings.tradovate.lockout_backoff,
                             captcha_backoff=settings.tradovate.captcha_backoff)
        #: Set at shutdown: exits are final, nothing is restarted.
        self.stopping = False

    def configure(self, new: Settings) -> None:
        """A reload's settings: a new restart policy and heartbeat limits if they changed; permits keep their queue."""
        if new.supervisor != self.settings.supervisor:
            self.policy = RestartPolicy.from_settings(new.supervisor, self.rng)
            self.limits = Limits.from_settings(new.supervisor)
        self.permits.reconfigure_from(new)
        self.budget.reconfigure(lockout_backoff=new.tradovate.lockout_backoff,
                                captcha_backoff=new.tradovate.captcha_backoff)
        self.settings = new
        self.policy.set_shards(self.wanted() | set(self.shards))

    # --- queries ---------------------------------------------------------------------

    def wanted(self) -> set[ShardKey]:
        """The shards the configuration asks for."""
        divisor = self.settings.sync.divisor
        return {ShardKey(divisor, r) for r in self.settings.sync.remainders}

    def any_running(self) -> bool:
        return any(s.running for s in self.shards.values())

    def all_live(self) -> bool:
        """Every configured shard has been live at least once."""
        return bool(self.shards) and all(s.ever_live for s in self.shards.values())

    def all_live_now(self) -> bool:
        """The table is exactly the configured shards, and every one is live right now (none parked)."""
        return set(self.shards) == self.wanted() and all(
            s.state is ShardState.LIVE and not self.parked(s) for s in self.shards.values())

    def status_line(self) -> str:
        # Runs on every pass of the loop: counts only, not a whole snapshot.
        line = status_line(summarize((s.state, self.parked(s)) for s in self.shards.values()))
        paused = self.budget.paused_until(self.clock())
        return line if paused is None else f"{line}; new connections paused by Tradovate's rate limit"

    def parked(self, shard: Shard) -> bool:
        """Parked by the restart policy (a crash loop) or by the API budget (the server keeps refusing it)."""
        return shard.parked or self.budget.parked(shard.key)

    def statuses(self, now: float, wall: float) -> tuple[ShardStatus, ...]:
        return tuple(self._status(s, now, wall) for s in sorted(self.shards.values(), key=lambda s: s.key))

    def _status(self, shard: Shard, now: float, wall: float) -> ShardStatus:
        status = shard.status(now, wall)
        budget = self.budget.shard(shard.key)
        if budget.parked:
            assert budget.parked_until is not None
            # Its worker waits for a permit that does not come: to an operator that is "parked".
            return dataclasses.replace(
                status, state=ShardState.PARKED, parked=True, parked_reason=budget.parked_reason,
                rejections=budget.rejections, next_restart_in=round(max(0.0, budget.parked_until - now), 3))
        return dataclasses.replace(status, rejections=budget.rejections)

    # --- workers ---------------------------------------------------------------------

    def add(self, remainder: int, options: WorkerOptions) -> Shard:
        """A new shard of ``options.divisor``; its worker is forked from the loop (RestartsDue), a few per pass."""
        shard = Shard(remainder, options, self.procs)
        shard.next_start_at = self.clock()
        shard.taken_wall = self.wall()
        self.shards[shard.key] = shard
        return shard

    def spawn(self, shard: Shard) -> None:
        now = self.clock()
        pid = shard.start(now=now, wall=self.wall(), parent_pid=self.pid, selector=self.selector,
                          on_output=functools.partial(self.read_worker, shard), on_exit=self.on_exit_fd)
        self.policy.on_start(shard.key, now)
        token, expires_at = self.login.keeper.token, self.login.keeper.expires_at
        if token is not None:
            shard.tell(ipc.Token(token, expires_at or 0.0))
        self.log.info("shard_started", shard=shard.remainder, divisor=shard.key.divisor, worker_pid=pid,
                      restarts=shard.restarts)

    def on_exit_fd(self, mask: int) -> None:
        """A pidfd turned readable: the parent's reap (of every child, not only workers) collects the exit."""
        self._reap()

    def read_worker(self, shard: Shard, mask: int = selectors.EVENT_READ) -> None:
        if shard.outbox is None:
            return  # reaped earlier in this same wakeup; its pipe is closed
        try:
            messages = shard.outbox.read()
        except ipc.IPCError as exc:
            self.log.error("worker_pipe_corrupt", shard=shard.remainder, error=clip(str(exc), MAX_TEXT))
            shard.signal(signal.SIGKILL)
            return
        now = self.clock()
        # It reads its inbox in the same loop that wrote to us: whatever its pipe owes it can go now.
        shard.flush()
        for message in messages:
            self.on_message(shard, message, now)
        if shard.outbox.eof:
            # The worker is exiting; its pidfd or SIGCHLD brings the exit.
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(shard.outbox.fd)

    def on_message(self, shard: Shard, message: ipc.Message, now: float) -> None:
        if isinstance(message, ipc.Heartbeat):
            was_live = shard.ever_live
            before = shard.beat.state if shard.beat is not None else None
            shard.on_beat(message, now)
            self.permits.report(shard.key, message.state)
            if message.state in _AUTHORIZED and before not in _AUTHORIZED:
                self.budget.authorized()
            self.budget.progressed(shard.key, live=message.state is ShardState.LIVE)
            if shard.ever_live and not was_live:
                self.log.info("shard_live", shard=shard.remainder, divisor=shard.key.divisor, entities=message.entities)
        elif isinstance(message, ipc.Rejected):
            self.on_rejected(shard, message, now)
        elif isinstance(message, ipc.Throttled):
            self.on_throttled(message.reason, message.endpoint, message.text, now, shard=shard.remainder)
        elif isinstance(message, ipc.NeedPermit):
            self.permits.request(shard.key, now)
        elif isinstance(message, ipc.NeedToken):
            answer = self.login.keeper.on_rejected(message.rejected, self.wall())
            if isinstance(answer, Resend):
                shard.tell(ipc.Token(answer.token, answer.expires_at))
            else:
                self.log.warning("token_rejected_by_server", shard=shard.remainder)
        elif isinstance(message, ipc.Hello) and (message.pid != shard.pid or message.remainder != shard.remainder):
            self.log.error("worker_hello_mismatch", shard=shard.remainder, hello=repr(message))

    def on_rejected(self, shard: Shard, message: ipc.Rejected, now: float) -> None:
        """The server refused a request of this shard: count it; park the shard or log in again when due."""
        text = clip(message.text, MAX_TEXT)
        shard.last_error = clip(f"{message.endpoint} refused with {message.status}: {text}", MAX_TEXT)
        decisions = self.budget.rejected(shard.key, message.endpoint, message.status, text, now)
        self.log.warning("shard_refused", shard=shard.remainder, divisor=shard.key.divisor, endpoint=message.endpoint,
                         status=message.status, text=text, rejections=self.budget.shard(shard.key).rejections)
        for decision in decisions:
            if isinstance(decision, api.Park):
                self.log.error("shard_parked", shard=decision.key.remainder, divisor=decision.key.divisor,
                               reason=decision.reason, retry_in=round(decision.until - now, 1),
                               endpoint=message.endpoint, status=message.status)
            elif isinstance(decision, api.Relogin):
                planned = self.login.keeper.evicted(decision.why, self.wall())
                self.log.warning("session_evicted", why=decision.why, login_planned=planned)
                self.session_evicted()

    def on_throttled(self, reason: str, endpoint: str, text: str, now: float, *, shard: int | None = None) -> None:
        """The server said slow down for the whole API user: no new handshake of any shard for a while."""
        text = clip(text, MAX_TEXT)
        until = self.budget.throttled(reason, endpoint, text, now)
        self.log.error("connections_paused", reason=reason, endpoint=endpoint, text=text, shard=shard,
                       resume_in=round(until - now, 1))

    def login_waited(self, wait: Wait) -> None:
        """The token keeper was told to wait: a REST lock-out (423/429) also holds back every handshake; an
        eviction explains the quota shutdowns its sockets got."""
        if wait.kind == "locked":
            self.on_throttled("rest429", "auth", wait.why, self.clock())
        elif wait.kind == "evicted":
            self.session_evicted()

    def session_evicted(self) -> None:
        if self.budget.evicted():
            self.log.info("connections_resumed", why="the quota shutdowns came from our own evicted session")

    def hold(self, now: float) -> Callable[[ShardKey], float | None]:
        """The permit gate's hold: until when the budget keeps a shard from connecting."""
        return lambda key: self.budget.hold_until(key, now)

    def exited(self, pid: int, status: int) -> bool:
        """``pid`` was reaped: handle it if it was a worker (and say so)."""
        shard = next((s for s in self.shards.values() if s.pid == pid), None)
        if shard is None:
            return False
        self.on_exit(shard, status)
        return True

    def on_exit(self, shard: Shard, status: int) -> None:
        now = self.clock()
        expected = shard.stop_requested
        hung = shard.hung
        for message in shard.detach(self.selector):
            self.on_message(shard, message, now)
        shard.beat = None
        self.permits.forget(shard.key)
        how = describe(status)
        uptime = round(now - shard.started_at, 3)
        if expected:
            self.log.info("shard_stopped", shard=shard.remainder, divisor=shard.key.divisor, status=how, uptime=uptime)
        else:
            self.log.warning("shard_exited", shard=shard.remainder, divisor=shard.key.divisor, status=how,
                             uptime=uptime, hung=hung)
            shard.last_error = f"worker {how}" + (" (hung)" if hung else "")
        if self.stopping:
            shard.phase = ShardState.STOPPED
            return
        then, shard.then = shard.then, Then.POLICY
        if then is Then.REMOVE:
            self.drop(shard.key)
            return
        if then is Then.RESTART:
            self.policy.on_exit(shard.key, now, expected=True)
            shard.phase = ShardState.STARTING
            shard.next_start_at = now
            return
        self.apply_policy(shard, self.policy.on_exit(shard.key, now, expected=expected), now)

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
            shard.parked_reason = decision.reason
            shard.next_start_at = decision.until
            self.log.error("shard_parked", shard=shard.remainder, divisor=shard.key.divisor, reason=decision.reason,
                           retry_in=round(decision.until - now, 1))
        else:
            self.log.critical("global_breaker_tripped", reason=decision.reason)
            self.on_breaker("global breaker")

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
        for key in self.permits.grant(now, self.hold(now)):
            self.budget.granted(key, now)
            holder = self.shards.get(key)
            if holder is not None and holder.running:
                holder.tell(ipc.Permit())

    def next_permit_at(self, now: float) -> float | None:
        return self.permits.next_at(now, self.hold(now))

    def hand_out_token(self, token: str, expires_at: float) -> None:
        self.budget.token_changed()
        for shard in self.shards.values():
            if shard.running:
                shard.tell(ipc.Token(token, expires_at))

    # --- stop and reload ---------------------------------------------------------------

    def stop_all(self, now: float) -> None:
        """Shutdown: every worker is asked to stop, SIGKILL after shutdown_timeout; nothing restarts."""
        self.stopping = True
        for shard in self.shards.values():
            shard.request_stop(now, self.settings.supervisor.shutdown_timeout)

    def kill_all(self) -> None:
        for shard in self.shards.values():
            if shard.running:
                shard.signal(signal.SIGKILL)

    def carry_out_step(self, step: Step, now: float) -> None:
        """One remainder's step of a reload plan, exactly as planned."""
        key = ShardKey(self.settings.sync.divisor, step.remainder)
        shard = self.shards.get(key)
        if step.row is None:
            if shard is not None:
                self.drop(key)
            return
        if shard is None:
            shard = self.add(step.remainder, step.row.options)
        shard.options, shard.then = step.row.options, step.row.then
        if step.stop_worker:
            shard.request_stop(now, self.settings.supervisor.shutdown_timeout)
        if step.start_now:
            shard.next_start_at = now

    def drop(self, key: ShardKey) -> None:
        """The shard leaves the table (its worker, if any, is reaped): nothing remembers it."""
        del self.shards[key]
        self.policy.forget(key)
        self.budget.forget(key)
        self.policy.set_shards(self.wanted() | set(self.shards))

    def stop_and_drop(self, key: ShardKey, now: float) -> None:
        """A reshard is done with this shard: it leaves the table now, or once its worker is reaped."""
        shard = self.shards.get(key)
        if shard is None:
            return
        if not shard.running:
            self.drop(key)
            return
        if shard.then is Then.POLICY:
            shard.request_stop(now, self.settings.supervisor.shutdown_timeout)
        shard.then = Then.REMOVE
