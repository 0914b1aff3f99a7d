"""A shard's identity in the parent: its divisor and remainder (two divisors run side by side while resharding)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ShardKey"]


class ShardKey(NamedTuple):
    """Shard ``remainder`` of ``divisor``; ordered by divisor, then remainder."""

    divisor: int
    remainder: int

    def label(self, current: int) -> str:
        """The shard's name in metrics: its remainder, with ``/divisor`` when that is not ``current``.

        The shards of the configured divisor keep their plain label across a
        reshard; the old divisor's, while they still run, cannot be confused
        with them.
        """
        return str(self.remainder) if self.divisor == current else f"{self.remainder}/{self.divisor}"
