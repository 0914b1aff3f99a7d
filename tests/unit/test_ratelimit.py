"""Unit tests for the log line limiter: one line per kind per interval, a count of the rest, a bounded table."""

from __future__ import annotations

from typing import Any

import pytest

from shardsync.ratelimit import OVERFLOW, LineLimiter, Throttled


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Stands in for a structlog logger: keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append(("info", event, fields))

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append(("warning", event, fields))


def test_one_line_per_kind_per_interval_with_the_count_of_the_rest() -> None:
    """The first line of a kind is written, the rest of its interval held; the next line carries the count."""
    clock = Clock()
    limiter = LineLimiter(clock, interval=10.0)
    assert limiter.allow("a") == ("a", 0)
    assert [limiter.allow("a") for _ in range(5)] == [None] * 5
    assert limiter.allow("b") == ("b", 0)  # kinds are independent
    clock.now += 9.999
    assert limiter.allow("a") is None
    clock.now += 0.001
    assert limiter.allow("a") == ("a", 6)
    assert limiter.allow("a") is None


def test_held_lines_of_a_kind_that_went_quiet_are_summarised_once() -> None:
    """A kind that stops: its count comes out of expired() once, after its interval, and never again."""
    clock = Clock()
    limiter = LineLimiter(clock, interval=10.0)
    limiter.allow("a")
    limiter.allow("a")
    limiter.allow("a")
    limiter.allow("b")  # nothing held back: no summary
    assert limiter.expired() == []
    clock.now += 10.0
    assert limiter.expired() == [("a", 2)]
    assert limiter.expired() == []
    assert limiter.allow("a") == ("a", 0)  # its count was reported already


def test_a_server_cannot_grow_the_table() -> None:
    """Past `kinds` distinct kinds in one interval, new kinds share OVERFLOW: 10,000 names, a few lines."""
    clock = Clock()
    limiter = LineLimiter(clock, interval=10.0, kinds=4)
    written = [limiter.allow(f"kind-{i}") for i in range(10_000)]
    assert [w for w in written if w is not None] == [(f"kind-{i}", 0) for i in range(4)] + [(OVERFLOW, 0)]
    clock.now += 10.0
    assert limiter.expired() == [(OVERFLOW, 10_000 - 5)]
    assert limiter.allow("kind-9") == ("kind-9", 0)  # closed windows are forgotten


def test_a_full_table_reports_the_windows_it_drops() -> None:
    """Windows dropped to make room still report what they held (nothing is silently forgotten)."""
    clock = Clock()
    limiter = LineLimiter(clock, interval=10.0, kinds=1)
    limiter.allow("a")
    limiter.allow("a")
    clock.now += 10.0
    assert limiter.allow("b") == ("b", 0)  # "a" had to go
    assert limiter.expired() == [("a", 1)]


@pytest.mark.parametrize(("interval", "kinds"), [(0.0, 4), (-1.0, 4), (1.0, 0)])
def test_nonsense_settings_are_refused(interval: float, kinds: int) -> None:
    """An interval that is not positive or a table without room is a programming error."""
    with pytest.raises(ValueError):
        LineLimiter(Clock(), interval=interval, kinds=kinds)


def test_throttled_writes_first_lines_counts_and_summaries() -> None:
    """Throttled: one line per kind, `held` on the next one, `log_lines_held` for a kind gone quiet."""
    clock, log = Clock(), Recorder()
    throttled = Throttled(log, LineLimiter(clock, interval=10.0))
    for _ in range(1000):
        throttled.info("system alert", "system_event", name="alert")
    throttled.warning("rejected order", "entity_quarantined", key="order 1")
    assert log.lines == [("info", "system_event", {"name": "alert"}),
                         ("warning", "entity_quarantined", {"key": "order 1"})]
    clock.now += 10.0
    throttled.info("system alert", "system_event", name="alert")
    assert log.lines[2] == ("info", "system_event", {"name": "alert", "held": 999})
    throttled.info("system alert", "system_event", name="alert")
    clock.now += 10.0
    throttled.flush()
    assert log.lines[3:] == [("info", "log_lines_held", {"kind": "system alert", "held": 1, "interval": 10.0})]
    throttled.flush()
    assert len(log.lines) == 4


def test_throttled_names_the_overflow() -> None:
    """A line written under the overflow kind says so (limited_as)."""
    clock, log = Clock(), Recorder()
    throttled = Throttled(log, LineLimiter(clock, interval=10.0, kinds=1))
    throttled.info("a", "system_event", name="a")
    throttled.info("b", "system_event", name="b")
    assert log.lines[1] == ("info", "system_event", {"name": "b", "limited_as": OVERFLOW})
