"""The reload planner: each plan kind, the parent-wide flags, and exactness over any sequence of reloads."""

from __future__ import annotations

import functools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shardsync.config import Settings, parse_settings
from shardsync.supervisor.options import worker_options
from shardsync.supervisor.reload import Kind, Row, Step, Then, applied, plan, settled
from shardsync.worker.options import WorkerOptions

#: Config variants: 0 the base, 1 other entity types, 2 another backoff_max (both reach the worker),
#: 3 another app_version and log level (parent only: same worker options as 0).
VARIANTS: dict[int, dict[str, dict[str, Any]]] = {
    0: {},
    1: {"sync": {"entity_types": ["user", "position"]}},
    2: {"supervisor": {"backoff_max": 7.0}},
    3: {"tradovate": {"app_version": "9.9"}, "log": {"level": "debug"}},
}


@functools.cache
def config(remainders: tuple[int, ...], variant: int = 0, divisor: int = 6) -> Settings:
    data: dict[str, dict[str, Any]] = {
        "tradovate": {"app_id": "unit", "cid": 1},
        "sync": {"divisor": divisor, "remainders": list(remainders)},
    }
    for section, values in VARIANTS[variant].items():
        data.setdefault(section, {}).update(values)
    return parse_settings(data, machine_id=lambda: "machine", user=lambda: "user")


def running(settings_: Settings) -> dict[int, Row]:
    """The table of a parent that runs ``settings_`` with every worker up."""
    options = worker_options(settings_)
    return {r: Row(options, running=True) for r in settings_.sync.remainders}


def step_of(p: Any, remainder: int) -> Step:
    return next(s for s in p.steps if s.remainder == remainder)


# --- each kind ------------------------------------------------------------------------------


def test_added_remainder_starts_now() -> None:
    """A remainder only the new config has is started at once with the new options."""
    old, new = config((0, 1)), config((0, 1, 2))
    p = plan(running(old), old, new)
    assert p.added == [2] and p.removed == [] and p.restarted == []
    assert step_of(p, 2) == Step(2, Kind.START, Row(worker_options(new), running=False), start_now=True)
    assert step_of(p, 0).kind is Kind.KEEP and step_of(p, 0).row == running(old)[0]


def test_removed_remainder_is_stopped_then_dropped() -> None:
    """A running removed shard is asked to stop and dropped once reaped; a shard with no worker leaves at once."""
    old, new = config((0, 1, 2)), config((0, 1))
    table = running(old)
    table[1] = Row(table[1].options, running=False)  # in backoff
    p = plan(table, old, new)
    assert p.removed == [2]
    assert step_of(p, 2) == Step(2, Kind.STOP, Row(table[2].options, running=True, then=Then.REMOVE), stop_worker=True)
    gone = plan(table, old, config((0,)))
    assert step_of(gone, 1) == Step(1, Kind.STOP, None)


def test_changed_options_restart_and_a_stopped_shard_starts_now() -> None:
    """New worker options restart a running shard after its stop, and start one with no worker at once."""
    old, new = config((0, 1)), config((0, 1), variant=1)
    table = running(old)
    table[1] = Row(table[1].options, running=False)
    p = plan(table, old, new)
    assert p.restarted == [0, 1]
    assert step_of(p, 0) == Step(0, Kind.RESTART, Row(worker_options(new), True, Then.RESTART), stop_worker=True)
    assert step_of(p, 1) == Step(1, Kind.RESTART, Row(worker_options(new), False), start_now=True)


def test_parent_only_settings_keep_every_shard() -> None:
    """app_version and log level are the parent's: every shard is kept, and only the logging flag is set."""
    old, new = config((0, 1)), config((0, 1), variant=3)
    p = plan(running(old), old, new)
    assert [s.kind for s in p.steps] == [Kind.KEEP, Kind.KEEP]
    assert (p.logging, p.supervisor, p.status) == (True, False, False)


def test_backoff_max_reaches_the_workers() -> None:
    """supervisor.backoff_max is part of the worker options, so it restarts every shard."""
    old, new = config((0, 1)), config((0, 1), variant=2)
    p = plan(running(old), old, new)
    assert p.restarted == [0, 1] and p.supervisor
    assert worker_options(new).backoff_max == 7.0


def test_re_added_while_stopping_runs_again_after_the_reap() -> None:
    """A shard whose worker is still stopping after a removal is, when re-added, restarted once reaped."""
    first, second, third = config((0, 1)), config((0,)), config((0, 1), variant=1)
    table = applied(running(first), plan(running(first), first, second))
    assert table[1].then is Then.REMOVE
    p = plan(table, second, third)
    assert p.added == [1]
    assert step_of(p, 1) == Step(1, Kind.START, Row(worker_options(third), True, Then.RESTART))
    assert settled(applied(table, p)) == {0: worker_options(third), 1: worker_options(third)}


def test_stopping_for_a_restart_is_not_asked_twice() -> None:
    """A worker already stopping for a restart is not sent a second stop when a reload removes or changes it."""
    old, new = config((0,)), config((0,), variant=1)
    table = applied(running(old), plan(running(old), old, new))
    assert table[0].then is Then.RESTART
    assert step_of(plan(table, new, config((1,))), 0).stop_worker is False
    assert step_of(plan(table, new, config((0,), variant=2)), 0).stop_worker is False


# --- exactness --------------------------------------------------------------------------------

CONFIGS = st.one_of(
    st.none(),  # a file that does not load: the reload changes nothing
    st.tuples(
        st.frozensets(st.integers(0, 5), min_size=1).map(lambda rs: tuple(sorted(rs))),
        st.sampled_from(sorted(VARIANTS)),
    ),
)
EVENTS = st.lists(st.one_of(
    st.tuples(st.just("reload"), CONFIGS),
    st.tuples(st.sampled_from(["reap", "crash", "start"]), st.integers(0, 5)),
), max_size=30)


def world(table: dict[int, Row], event: str, remainder: int) -> None:
    """What the loop does between reloads, for one remainder (a no-op when it does not apply)."""
    row = table.get(remainder)
    if row is None:
        return
    if event == "reap" and row.running and row.then is not Then.POLICY:
        if row.then is Then.REMOVE:
            del table[remainder]
        else:
            table[remainder] = Row(row.options, running=True)  # reaped and started again at once
    elif event == "crash" and row.running and row.then is Then.POLICY:
        table[remainder] = Row(row.options, running=False)
    elif event == "start" and not row.running:
        table[remainder] = Row(row.options, running=True)


def wanted(settings_: Settings) -> dict[int, WorkerOptions]:
    return {r: worker_options(settings_) for r in settings_.sync.remainders}


@settings(max_examples=300, deadline=None)
@given(first=st.frozensets(st.integers(0, 5), min_size=1), events=EVENTS)
def test_any_sequence_of_reloads_settles_on_the_last_valid_config(first: frozenset[int], events: list[Any]) -> None:
    """After any sequence of reloads (valid or not) with any reaps, crashes and starts in between, the table
    settles on exactly the last valid config's remainders, each with that config's options."""
    current = config(tuple(sorted(first)))
    table = running(current)
    for kind, arg in events:
        if kind != "reload":
            world(table, kind, arg)
        elif arg is not None:
            new = config(*arg)
            table = applied(table, plan(table, current, new))
            current = new
        assert settled(table) == wanted(current)
        assert all(row.running for row in table.values() if row.then is not Then.POLICY)
    for remainder in list(table):
        world(table, "reap", remainder)
        world(table, "start", remainder)
    assert table == {r: Row(options, running=True) for r, options in wanted(current).items()}
