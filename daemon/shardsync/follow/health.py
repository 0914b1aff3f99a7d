"""Which shards ``follow`` reports: the pure decision from status rows, the clock and what was reported."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shardsync.follow.cursor import ShardId
from shardsync.sinks.base import Freshness, SinkState

#: The state reported for a shard with no status row (its worker has not written one yet).
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Health:
    """What a shard looks like to a consumer: its state and whether a live shard has gone quiet."""

    state: str
    stale: bool

    @property
    def current(self) -> bool:
        return self.state == SinkState.LIVE and not self.stale


def health_of(row: Freshness | None, now: float, stale_after: float) -> Health:
    """A live shard is stale when its last frame is older than ``stale_after`` seconds (its worker is dead,
    or the socket is silent: the server sends a frame every 2.5 s)."""
    if row is None:
        return Health(UNKNOWN, False)
    stale = False
    if row.state == SinkState.LIVE:
        seen = seconds(row.last_event_at)
        stale = seen is None or now - seen > stale_after
    return Health(str(row.state), stale)


def seconds(iso: str | None) -> float | None:
    """Seconds since the epoch of an ISO-8601 UTC time (``...Z``); None when absent or unparseable."""
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def changed(
    reported: dict[ShardId, Health], rows: dict[ShardId, Freshness | None], now: float, stale_after: float
) -> list[tuple[ShardId, Health]]:
    """Shards to report now: first seen not current, or whose health changed since last reported.

    ``reported`` is updated.  A shard first seen current is recorded but not
    reported (the stream is about shards that are not live).
    """
    out = []
    for shard, row in sorted(rows.items()):
        health = health_of(row, now, stale_after)
        previous = reported.get(shard)
        reported[shard] = health
        if previous is None and health.current:
            continue
        if health != previous:
            out.append((shard, health))
    return out
