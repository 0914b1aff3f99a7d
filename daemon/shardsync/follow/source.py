"""What ``follow`` needs from a sink: its shards, their committed changes after a position, their status."""

from __future__ import annotations

from typing import Protocol

from shardsync.follow.cursor import ShardId
from shardsync.follow.record import Record
from shardsync.sinks.base import Freshness


class SourceError(Exception):
    """The sink cannot be read (missing directory, bad DSN, unreadable file)."""


class Source(Protocol):
    """A sink read back: every method is cheap when nothing changed (that is what polling costs)."""

    def shards(self) -> list[ShardId]:
        """The shards that exist now, ``(remainder, divisor)``; a shard that vanished (retired) drops out."""

    def present(self) -> set[ShardId]:
        """The shards still held after the last reads: a vanished shard leaves once it was read to its end."""

    def head(self, shard: ShardId) -> int:
        """The shard's last committed seq (0 when empty): where a follower that starts at the end begins."""

    def read(self, shard: ShardId, after: int, limit: int) -> list[Record]:
        """Up to ``limit`` committed changes of ``shard`` with seq > ``after``, in seq order."""

    def statuses(self) -> dict[ShardId, Freshness | None]:
        """The status row of every shard (None: the sink has none yet)."""

    def wait(self, timeout: float, wake_fd: int) -> None:
        """Block until something may have changed, ``wake_fd`` is readable, or ``timeout`` passed."""

    def close(self) -> None:
        """Release files and connections."""
