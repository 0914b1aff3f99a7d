"""Capped exponential backoff with jitter, computed without sleeping (pure).

The curve is tenacity's ``wait_exponential`` written out (``initial * 2**(n-1)``,
clamped to the maximum); jitter comes from an injected ``random.Random`` so
tests are exact.  "Equal jitter" keeps half of the delay fixed: spread enough
to break up herds, never near zero, so a fault loop cannot turn into a
hammering loop.
"""

from __future__ import annotations

import math
import random


class Backoff:
    """Delays for attempts 1, 2, 3...: ``min(max, initial * 2**(n-1))`` scaled by [0.5, 1)."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError(f"invalid backoff: initial {initial}, maximum {maximum}")
        self.initial = initial
        self.maximum = maximum
        self._rng = rng or random.Random()
        # Attempts from this one on sit at the cap; computing 2**n for them could overflow.
        self._capped_from = 1 + math.ceil(math.log2(maximum / initial)) if maximum > initial else 1

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay of ``attempt`` (1-based)."""
        attempt = max(1, attempt)
        if attempt >= self._capped_from:
            return self.maximum
        return min(self.maximum, self.initial * 2.0 ** (attempt - 1))

    def delay(self, attempt: int) -> float:
        """The jittered delay of ``attempt`` (1-based)."""
        return self.ceiling(attempt) * (0.5 + 0.5 * self._rng.random())
