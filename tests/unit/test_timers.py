"""The timer list: a timer runs exactly when its next_at has come, and the loop's timeout is the nearest next_at."""

from __future__ import annotations

from shardsync.supervisor.timers import TimerList


class At:
    """A timer due at fixed times; records when it ran and can move another timer when it runs."""

    def __init__(self, at: float | None, *, then: float | None = None, moves: At | None = None,
                 to: float | None = None) -> None:
        self.at, self.then, self.moves, self.to = at, then, moves, to
        self.ran: list[float] = []

    def next_at(self, now: float) -> float | None:
        return self.at

    def run_due(self, now: float) -> None:
        self.ran.append(now)
        self.at = self.then
        if self.moves is not None:
            self.moves.at = self.to


def test_only_due_timers_run_and_the_timeout_is_the_nearest_deadline() -> None:
    """At 10 the timer due at 10 runs, the one due at 12 does not, and the timeout is 2 s (to 12)."""
    due, later, idle = At(10.0, then=None), At(12.0), At(None)
    timers = TimerList([due, later, idle])
    assert timers.run_due(10.0, 5.0) == 2.0
    assert due.ran == [10.0] and later.ran == [] and idle.ran == []
    assert timers.run_due(10.5, 5.0) == 1.5
    assert due.ran == [10.0]


def test_timeout_is_capped_and_zero_while_something_stays_due() -> None:
    """With nothing pending the timeout is the cap; a timer still due after running gives a zero timeout."""
    assert TimerList([At(None)]).run_due(0.0, 5.0) == 5.0
    stubborn = At(1.0, then=1.0)
    assert TimerList([stubborn]).run_due(3.0, 5.0) == 0.0


def test_a_timer_moving_an_earlier_ones_deadline_is_seen_by_the_timeout() -> None:
    """When a later timer's run brings an earlier timer's deadline forward, the timeout follows it."""
    first = At(100.0)
    second = At(10.0, then=None, moves=first, to=10.5)
    assert TimerList([first, second]).run_due(10.0, 5.0) == 0.5
