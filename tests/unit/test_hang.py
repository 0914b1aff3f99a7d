"""Unit tests for the hang verdict: heartbeat deadlines, the hung judgement and the kill after the grace."""

from __future__ import annotations

from typing import Any

from shardsync.config import SupervisorSettings
from shardsync.supervisor.hang import (
    FIRST_BEAT_GRACE,
    Hung,
    Kill,
    Limits,
    Watch,
    heartbeat_deadline,
    next_check,
    verdict,
)

LIMITS = Limits(interval=1.0, timeout=10.0, first_grace=30.0, hang_grace=0.5)


def watch(**overrides: Any) -> Watch:
    values: dict[str, Any] = {"started": 100.0, "last_beat": None, "busy_for": 0.0, "kill_at": None,
                              "stopping": False}
    return Watch(**{**values, **overrides})


def test_heartbeat_deadline_before_first_beat_is_the_grace() -> None:
    """Before any heartbeat the worker has first_grace from its start, whatever the timeout."""
    assert heartbeat_deadline(watch(started=100.0), LIMITS) == 130.0


def test_heartbeat_deadline_after_a_beat_is_the_timeout() -> None:
    """After a beat with no announced blocking step the deadline is last_beat + timeout."""
    assert heartbeat_deadline(watch(last_beat=200.0), LIMITS) == 210.0


def test_heartbeat_deadline_extends_for_announced_busy_steps() -> None:
    """A worker announcing a blocking step gets busy_for + interval, but never less than the timeout."""
    assert heartbeat_deadline(watch(last_beat=200.0, busy_for=45.0), LIMITS) == 246.0
    assert heartbeat_deadline(watch(last_beat=200.0, busy_for=3.0), LIMITS) == 210.0


def test_silent_worker_is_hung_exactly_at_its_deadline() -> None:
    """A worker whose last beat is 10 s old is judged hung at 10 s, not before, with SIGKILL due after the grace."""
    w = watch(last_beat=200.0)
    assert next_check(w, LIMITS) == 210.0
    assert verdict(w, LIMITS, 209.999) is None
    assert verdict(w, LIMITS, 210.0) == Hung(kill_at=210.5, last_beat_age=10.0)


def test_worker_without_a_beat_is_hung_after_the_first_grace() -> None:
    """Before its first heartbeat a worker is judged only after first_grace, and its beat age is unknown."""
    w = watch()
    assert verdict(w, LIMITS, 129.9) is None
    assert verdict(w, LIMITS, 130.0) == Hung(kill_at=130.5, last_beat_age=None)


def test_kill_deadline_wins_and_a_stopping_worker_is_never_judged_hung() -> None:
    """With kill_at set the only verdict is Kill at kill_at; a stopping worker without one has no deadline."""
    w = watch(last_beat=200.0, kill_at=205.0, stopping=True)
    assert next_check(w, LIMITS) == 205.0
    assert verdict(w, LIMITS, 204.0) is None
    assert verdict(w, LIMITS, 205.0) == Kill()
    quiet = watch(last_beat=200.0, stopping=True)
    assert next_check(quiet, LIMITS) is None
    assert verdict(quiet, LIMITS, 10_000.0) is None


def test_limits_from_settings() -> None:
    """Limits take interval and timeout from [supervisor]; the first grace adds FIRST_BEAT_GRACE; the hang grace
    never exceeds shutdown_timeout."""
    limits = Limits.from_settings(SupervisorSettings(heartbeat_interval=0.25, heartbeat_timeout=2.0,
                                                     shutdown_timeout=0.2))
    assert limits == Limits(interval=0.25, timeout=2.0, first_grace=2.0 + FIRST_BEAT_GRACE, hang_grace=0.2)
