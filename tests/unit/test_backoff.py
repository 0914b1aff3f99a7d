"""The shared backoff curve: doubling, cap, jitter band, no overflow for huge attempt numbers."""

from __future__ import annotations

import random

import pytest

from shardsync.backoff import Backoff


def test_ceiling_doubles_from_initial_until_the_cap() -> None:
    """Attempt n waits at most initial * 2**(n-1), never more than the maximum."""
    backoff = Backoff(0.5, 60.0, random.Random(1))
    assert [backoff.ceiling(n) for n in range(1, 10)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    """A shard failing for days (attempt 10**6) gets the cap, not an OverflowError."""
    backoff = Backoff(0.001, 3600.0, random.Random(1))
    assert backoff.ceiling(10**6) == 3600.0
    assert 1800.0 <= backoff.delay(10**6) < 3600.0


def test_delay_is_equal_jitter_within_half_and_whole_ceiling() -> None:
    """Every delay lies in [ceiling/2, ceiling): spread, but never near zero."""
    backoff = Backoff(1.0, 30.0, random.Random(7))
    for attempt in range(1, 12):
        for _ in range(50):
            delay = backoff.delay(attempt)
            assert 0.5 * backoff.ceiling(attempt) <= delay < backoff.ceiling(attempt)


def test_same_seed_same_delays() -> None:
    """The rng is injected: one seed gives one sequence of delays."""
    first = [Backoff(0.5, 8.0, random.Random(3)).delay(n) for n in range(1, 8)]
    again = [Backoff(0.5, 8.0, random.Random(3)).delay(n) for n in range(1, 8)]
    assert first == again


@pytest.mark.parametrize(("initial", "maximum"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_invalid_curves_are_refused(initial: float, maximum: float) -> None:
    """A zero/negative start or a cap below the start is a ValueError, not a silent zero delay."""
    with pytest.raises(ValueError):
        Backoff(initial, maximum)
