"""The reload planner: which shards a new configuration starts, stops, restarts or keeps (pure).

The loop hands :func:`plan` its shard table as plain :class:`Row` values plus
the old and the new settings, and carries out the :class:`Plan` it gets back,
step by step, without deciding anything itself: each :class:`Step` names the
row the shard has afterwards and whether its worker is to be stopped now or a
worker is to be started now.

What a worker depends on is its :class:`WorkerOptions` and nothing else
(``supervisor/options.py``), so a shard is restarted exactly when that value
changes: a log level, the status listener or a parent-only timer restart
nothing; ``supervisor.backoff_max`` restarts every shard.

Exactness: :func:`settled` is what a table runs once every pending stop is
reaped.  After any sequence of plans, with any reaps in between, it equals the
last plan's remainders, each with that plan's options.  In particular a shard
removed by one reload and re-added by the next while its old worker is still
stopping runs again as soon as that worker is reaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from shardsync.config import Settings
from shardsync.supervisor.options import worker_options
from shardsync.worker.options import WorkerOptions

__all__ = ["Kind", "Plan", "Row", "Step", "Then", "applied", "plan", "settled"]


class Then(StrEnum):
    """What the loop does once a shard's current worker is reaped."""

    POLICY = "policy"  # ask the restart policy (a failure, or an exit nobody asked for)
    RESTART = "restart"  # start a worker again at once, with the row's options
    REMOVE = "remove"  # drop the shard from the table


@dataclass(frozen=True, slots=True)
class Row:
    """One shard of the table as the planner sees it.

    ``options`` are those of its running worker, or of the next one when
    ``then`` is RESTART or no worker runs.
    """

    options: WorkerOptions
    running: bool
    then: Then = Then.POLICY


class Kind(StrEnum):
    """What a reload does to one remainder (as logged: added, removed, restarted)."""

    START = "start"
    STOP = "stop"
    RESTART = "restart"
    KEEP = "keep"


@dataclass(frozen=True, slots=True)
class Step:
    """One remainder's part of a plan.

    ``row`` is the shard's row afterwards (None: it leaves the table now);
    ``stop_worker``: ask its running worker to stop; ``start_now``: no worker
    runs, start one at once.
    """

    remainder: int
    kind: Kind
    row: Row | None
    stop_worker: bool = False
    start_now: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """A whole reload: every remainder's step, and which parent-wide parts changed."""

    steps: tuple[Step, ...]
    logging: bool = False
    supervisor: bool = False
    status: bool = False

    def of(self, kind: Kind) -> list[int]:
        """The remainders whose step is ``kind``, ascending."""
        return [step.remainder for step in self.steps if step.kind is kind]

    @property
    def added(self) -> list[int]:
        return self.of(Kind.START)

    @property
    def removed(self) -> list[int]:
        return self.of(Kind.STOP)

    @property
    def restarted(self) -> list[int]:
        return self.of(Kind.RESTART)


def plan(table: Mapping[int, Row], old: Settings, new: Settings) -> Plan:
    """The steps that take ``table`` (running ``old``) to ``new``; every remainder of either gets one."""
    options = worker_options(new)
    wanted = set(new.sync.remainders)
    steps: list[Step] = []
    for remainder in sorted(wanted | set(table)):
        row = table.get(remainder)
        if remainder not in wanted:
            if row is not None and row.then is not Then.REMOVE:
                steps.append(_stop(remainder, row))
        elif row is None:
            steps.append(Step(remainder, Kind.START, Row(options, running=False), start_now=True))
        elif row.then is Then.REMOVE:
            # A previous reload removed it and its worker is still stopping:
            # wanted again, it runs again as soon as that worker is reaped.
            steps.append(_replace_worker(remainder, Kind.START, row, options))
        elif row.options != options:
            steps.append(_replace_worker(remainder, Kind.RESTART, row, options))
        else:
            steps.append(Step(remainder, Kind.KEEP, row))
    return Plan(
        steps=tuple(steps),
        logging=new.log != old.log,
        supervisor=new.supervisor != old.supervisor,
        status=new.status != old.status,
    )


def _stop(remainder: int, row: Row) -> Step:
    if not row.running:
        return Step(remainder, Kind.STOP, None)
    # A worker already being stopped (then RESTART) needs no second request.
    return Step(remainder, Kind.STOP, replace(row, then=Then.REMOVE), stop_worker=row.then is Then.POLICY)


def _replace_worker(remainder: int, kind: Kind, row: Row, options: WorkerOptions) -> Step:
    if not row.running:
        return Step(remainder, kind, Row(options, running=False), start_now=True)
    return Step(remainder, kind, Row(options, running=True, then=Then.RESTART), stop_worker=row.then is Then.POLICY)


def applied(table: Mapping[int, Row], plan: Plan) -> dict[int, Row]:
    """The table after ``plan``'s steps (what the loop's execution of them amounts to)."""
    out = dict(table)
    for step in plan.steps:
        if step.row is None:
            out.pop(step.remainder, None)
        else:
            out[step.remainder] = step.row
    return out


def settled(table: Mapping[int, Row]) -> dict[int, WorkerOptions]:
    """The remainders ``table`` runs, and with which options, once every pending stop is reaped."""
    return {remainder: row.options for remainder, row in table.items() if row.then is not Then.REMOVE}
