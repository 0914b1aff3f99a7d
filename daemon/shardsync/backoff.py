"""Capped exponential backoff with jitter, computed without sleeping (pure).

The exponential curve is tenacity's ``wait_exponential``; jitter comes from an
injected ``random.Random`` so tests are exact.  "Equal jitter" keeps half of
the delay fixed: spread enough to break up herds, never near zero, so a fault
loop cannot turn into a hammering loop.
"""

from __future__ import annotations

import random

from tenacity import RetryCallState, wait_exponential


class Backoff:
    """Delays for attempts 1, 2, 3...: ``min(max, initial * 2**(n-1))`` scaled by [0.5, 1)."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError(f"invalid backoff: initial {initial}, maximum {maximum}")
        self.initial = initial
        self.maximum = maximum
        self._rng = rng or random.Random()
        self._curve = wait_exponential(multiplier=initial, max=maximum, exp_base=2)

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay of ``attempt`` (1-based)."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = max(1, attempt)
        # tenacity's curve is multiplier * 2**(n-1) for n >= 1, clamped to max.
        return float(self._curve(state))

    def delay(self, attempt: int) -> float:
        """The jittered delay of ``attempt`` (1-based)."""
        ceiling = self.ceiling(attempt)
        return ceiling * (0.5 + 0.5 * self._rng.random())
