"""Carrying out a resharding plan (``reshard.py``) in the shard table, one move at a time.

The arbiter makes a :class:`Resharding` when a SIGHUP changes the divisor and
calls :meth:`Resharding.advance` from its loop (``timers.ReshardDue``) until
the plan ends.  A move's new shards are added to the table and connect
through the permits like any other; once every one is live (its snapshot
committed), the move's old shards are asked to stop and, once reaped, their
sink data is handed to the retirer (``shard_status`` ``retired``, files to
``retired/``).  A new shard that parks (a crash loop, or the budget after
the server keeps refusing it) aborts its move: its new shards are stopped
and the old ones keep running.  Nothing here decides what to move: that is
the plan's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from shardsync.ipc import ShardState
from shardsync.logs import get_logger
from shardsync.supervisor.options import worker_options
from shardsync.supervisor.reload import Then
from shardsync.supervisor.reshard import Move, Reshard, describe, plan
from shardsync.supervisor.retire import FILE_KINDS, RetireJob
from shardsync.supervisor.shardkey import ShardKey

if TYPE_CHECKING:
    from shardsync.config import Settings
    from shardsync.supervisor.shard import Shard
    from shardsync.supervisor.table import ShardTable
    from shardsync.worker.options import WorkerOptions

__all__ = ["MoveState", "Resharding", "begin", "prepare"]


class MoveState(StrEnum):
    PENDING = "pending"
    STARTING = "starting"  # its new shards run, not all live yet
    DONE = "done"  # its new shards were all live; its old ones are stopped (or stopping)
    ABORTED = "aborted"  # a new shard failed: they were stopped, the old ones keep running


@dataclass
class Resharding:
    """One plan in progress, or finished (kept for /status until the next)."""

    plan: Reshard
    options: WorkerOptions
    started_at: float
    states: list[MoveState] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)
    index: int = 0
    finished_at: float | None = None
    #: New shards running at once beyond the shards being replaced, at its highest.
    peak_extra: int = 0
    #: Retire jobs of stopped old shards whose worker is not reaped yet.
    awaiting_reap: list[RetireJob] = field(default_factory=list)
    #: Shards this plan asked to stop: the next move starts once they are gone, so that the
    #: connections open at once never exceed the old ones plus one move's new ones.
    leaving: set[ShardKey] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.states:
            self.states = [MoveState.PENDING] * len(self.plan.moves)
        self.log = get_logger("shardsync.supervisor")

    @property
    def active(self) -> bool:
        return self.finished_at is None

    def new_keys(self, move: Move) -> list[ShardKey]:
        return [ShardKey(self.plan.new_divisor, r) for r in move.start]

    def old_keys(self, move: Move) -> list[ShardKey]:
        return [ShardKey(self.plan.old_divisor, r) for r in move.stop]

    # --- what the loop asks ------------------------------------------------------------------

    def due(self, table: ShardTable) -> bool:
        """Whether :meth:`advance` has something to do now."""
        if any(_key(job) not in table.shards for job in self.awaiting_reap):
            return True
        return self.active and self._next(table) is not None

    def advance(self, table: ShardTable, now: float) -> list[RetireJob]:
        """Carry out what is due: start, finish or abort moves; the retire jobs whose old worker is gone."""
        while self.active and (action := self._next(table)) is not None:
            if action == "finish":
                self._finish(now)
                break
            move = self.plan.moves[self.index]
            if action == "start":
                self._start(table, move)
                continue
            if action == "abort":
                self._abort(table, move, now)
            else:
                self._complete(table, move, now)
            self.index += 1
        ready = [job for job in self.awaiting_reap if _key(job) not in table.shards]
        self.awaiting_reap = [job for job in self.awaiting_reap if _key(job) in table.shards]
        return ready

    def _next(self, table: ShardTable) -> str | None:
        """What the current move does next: start, abort (a new shard failed), complete (all live), finish."""
        if self.index >= len(self.plan.moves):
            # Ended once every shard it stopped is gone: until then a reload could find them half there.
            return None if self._still_leaving(table) else "finish"
        if self.states[self.index] is MoveState.PENDING:
            return None if self._still_leaving(table) else "start"
        shards = [table.shards.get(key) for key in self.new_keys(self.plan.moves[self.index])]
        if any(_failed(table, s) for s in shards):
            return "abort"
        if all(_live(table, s) for s in shards):
            return "complete"
        return None

    def _still_leaving(self, table: ShardTable) -> bool:
        self.leaving &= set(table.shards)
        return bool(self.leaving)

    # --- the steps ----------------------------------------------------------------------------

    def _start(self, table: ShardTable, move: Move) -> None:
        self.states[self.index] = MoveState.STARTING
        for remainder in move.start:
            if ShardKey(self.plan.new_divisor, remainder) not in table.shards:
                table.add(remainder, self.options)
        self.peak_extra = max(self.peak_extra, len(move.start))
        self.log.info("reshard_move_started", move=self.index + 1, moves=len(self.plan.moves),
                      start=list(move.start), stop=list(move.stop), divisor=self.plan.new_divisor,
                      old_divisor=self.plan.old_divisor)

    def _complete(self, table: ShardTable, move: Move, now: float) -> None:
        for key in self.old_keys(move):
            shard = table.shards.get(key)
            if shard is None:
                continue
            self.awaiting_reap.append(_job(shard))
            self.leaving.add(key)
            table.stop_and_drop(key, now)
        self.states[self.index] = MoveState.DONE
        self.log.info("reshard_move_done", move=self.index + 1, moves=len(self.plan.moves), live=list(move.start),
                      stopped=list(move.stop), divisor=self.plan.new_divisor, old_divisor=self.plan.old_divisor)

    def _abort(self, table: ShardTable, move: Move, now: float) -> None:
        shards = [table.shards.get(key) for key in self.new_keys(move)]
        why = "; ".join(_why(table, s) for s in shards if _failed(table, s))
        for key in self.new_keys(move):
            self.leaving.add(key)
            table.stop_and_drop(key, now)
        self.states[self.index] = MoveState.ABORTED
        self.reasons[self.index] = why
        self.log.error("reshard_move_aborted", move=self.index + 1, moves=len(self.plan.moves),
                       start=list(move.start), kept=list(move.stop), divisor=self.plan.new_divisor,
                       old_divisor=self.plan.old_divisor, why=why)

    def _finish(self, now: float) -> None:
        self.finished_at = now
        aborted = [i + 1 for i, s in enumerate(self.states) if s is MoveState.ABORTED]
        log = self.log.error if aborted else self.log.info
        log("resharded", old_divisor=self.plan.old_divisor, divisor=self.plan.new_divisor,
            seconds=round(now - self.started_at, 3), moves=len(self.plan.moves), aborted=aborted,
            peak_extra_connections=self.peak_extra)

    # --- for /status ------------------------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        """The plan and where it is: each move's shards and state, and why an aborted move was."""
        moves = [
            {"start": list(move.start), "stop": list(move.stop), "state": str(self.states[i]),
             **({"why": self.reasons[i]} if i in self.reasons else {})}
            for i, move in enumerate(self.plan.moves)
        ]
        return {
            "state": "running" if self.active else ("aborted" if self.reasons else "done"),
            "shape": str(self.plan.shape),
            "old_divisor": self.plan.old_divisor,
            "divisor": self.plan.new_divisor,
            "move": min(self.index + 1, len(moves)),
            "moves": moves,
            "seconds": round((now if self.finished_at is None else self.finished_at) - self.started_at, 3),
            "peak_extra_connections": self.peak_extra,
        }

    def role(self, key: ShardKey) -> str | None:
        """``key``'s part in this resharding while it runs (see ``ShardStatus.reshard``)."""
        if not self.active:
            return None
        if key.divisor == self.plan.old_divisor:
            return "old"
        if key.divisor != self.plan.new_divisor:
            return None
        if self.index < len(self.plan.moves) and self.states[self.index] is MoveState.STARTING \
                and key.remainder in self.plan.moves[self.index].start:
            return "pending"
        return "new"

    def status_line(self) -> str:
        """A few words for systemd's STATUS=."""
        done = sum(s is MoveState.DONE for s in self.states)
        aborted = sum(s is MoveState.ABORTED for s in self.states)
        what = f"resharding {self.plan.old_divisor} -> {self.plan.new_divisor}: {done}/{len(self.states)} moves done"
        return what + (f", {aborted} aborted" if aborted else "")


def _key(job: RetireJob) -> ShardKey:
    return ShardKey(job.divisor, job.remainder)


def _job(shard: Shard) -> RetireJob:
    """Retiring ``shard``'s data in the sink its worker wrote (the old configuration's)."""
    o = shard.options
    files = o.sink_kind in FILE_KINDS
    return RetireJob(o.sink_kind, o.sink_path if files else "", "" if files else o.sink_dsn, shard.remainder,
                     o.divisor, replaced=True)


def _live(table: ShardTable, shard: Shard | None) -> bool:
    return shard is not None and shard.state is ShardState.LIVE and not table.parked(shard)


def _failed(table: ShardTable, shard: Shard | None) -> bool:
    return shard is None or table.parked(shard) or shard.then is Then.REMOVE


def _why(table: ShardTable, shard: Shard | None) -> str:
    if shard is None:
        return "a new shard left the table"
    reason = shard.parked_reason or table.budget.shard(shard.key).parked_reason or shard.last_error or "parked"
    return f"shard {shard.remainder}/{shard.key.divisor}: {reason}"


def prepare(table: ShardTable, new: Settings) -> Reshard | str | None:
    """What a reload to ``new`` reshards: None when it does not (one divisor throughout), a refusal, or the plan.

    Old shards are those of another divisor still in the table (all of them
    when the divisor changes; those an aborted move kept when it does not:
    the reload retries their moves); new shards are the remainders of ``new``
    the table does not run yet.
    """
    target = new.sync.divisor
    old_divisors = {key.divisor for key, s in table.shards.items()
                    if key.divisor != target and s.then is not Then.REMOVE}
    if not old_divisors:
        return None
    if len(old_divisors) > 1:
        return (f"shards of divisors {sorted(old_divisors)} still run (an aborted resharding): reload with "
                f"divisor {table.settings.sync.divisor} first to finish it")
    old_divisor = old_divisors.pop()
    wanted = set(new.sync.remainders)
    have = {key.remainder for key in table.shards if key.divisor == target}
    if have - wanted:
        return (f"shards {sorted(have - wanted)} of divisor {target} run but are not configured: change the "
                "remainders once the resharding is finished")
    options = worker_options(new)
    if any(table.shards[ShardKey(target, r)].options != options for r in have):
        return "worker settings changed while shards of an aborted resharding still run: finish the resharding first"
    old = frozenset(key.remainder for key, s in table.shards.items()
                    if key.divisor == old_divisor and s.then is not Then.REMOVE)
    return plan(old_divisor, old, target, frozenset(wanted - have))


def begin(reshard: Reshard, options: WorkerOptions, now: float) -> Resharding:
    """A :class:`Resharding` of ``reshard`` (logged, with what the two configurations do not share)."""
    log = get_logger("shardsync.supervisor")
    if reshard.uncovered:
        log.warning("reshard_uncovered", old_divisor=reshard.old_divisor, divisor=reshard.new_divisor,
                    accounts=describe(reshard.uncovered, reshard.modulus),
                    why="the new remainders do not cover every account the old ones did: no shard of this host "
                        "keeps them once their old shard stops")
    if reshard.added:
        log.info("reshard_added", old_divisor=reshard.old_divisor, divisor=reshard.new_divisor,
                 accounts=describe(reshard.added, reshard.modulus))
    log.info("reshard_started", old_divisor=reshard.old_divisor, divisor=reshard.new_divisor,
             shape=str(reshard.shape), moves=len(reshard.moves), max_extra_connections=reshard.max_extra)
    return Resharding(reshard, options, now)
