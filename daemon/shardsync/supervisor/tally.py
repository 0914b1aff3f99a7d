"""A shard's heartbeat counters summed over every worker it had, so its counters survive restarts.

A worker reports its counters from zero (CPU seconds, committed batches by
latency, quarantined, unattributed, sink errors), so taken as they come they
would drop to zero on every restart and vanish while no worker runs.  The
parent keeps, per shard, what its finished workers reported last plus what the
current one reports now.  Exact up to each worker's last heartbeat: whatever a
killed worker did after it is lost, as it would be anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from shardsync import ipc

__all__ = ["BUCKETS", "Counts", "Tally"]

#: The histogram's slots: one per ``ipc.COMMIT_BUCKETS`` bound, then +Inf.
BUCKETS: Final = len(ipc.COMMIT_BUCKETS) + 1
_NO_COMMITS: Final = (0,) * BUCKETS


@dataclass(frozen=True, slots=True)
class Counts:
    """Cumulative counters of one worker, or of several added up."""

    cpu_seconds: float = 0.0
    commits: tuple[int, ...] = _NO_COMMITS
    commit_seconds: float = 0.0
    quarantined: int = 0
    unattributed: int = 0
    sink_errors: int = 0

    @classmethod
    def of(cls, beat: ipc.Heartbeat) -> Counts:
        """The counters ``beat`` reports (a histogram of another shape counts as none)."""
        commits = beat.commits if len(beat.commits) == BUCKETS else _NO_COMMITS
        return cls(beat.cpu_seconds, tuple(commits), beat.commit_seconds, beat.quarantined, beat.unattributed,
                   beat.sink_errors)

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.cpu_seconds + other.cpu_seconds,
            tuple(a + b for a, b in zip(self.commits, other.commits, strict=True)),
            self.commit_seconds + other.commit_seconds,
            self.quarantined + other.quarantined,
            self.unattributed + other.unattributed,
            self.sink_errors + other.sink_errors,
        )


class Tally:
    """Finished workers' last counts plus the current worker's latest."""

    __slots__ = ("_current", "_done")

    def __init__(self) -> None:
        self._done = Counts()
        self._current = Counts()

    def beat(self, beat: ipc.Heartbeat) -> None:
        """The current worker's latest heartbeat (its counters are cumulative since its start)."""
        self._current = Counts.of(beat)

    def next_worker(self) -> None:
        """A new worker starts at zero: the previous one's last counts are kept for good."""
        self._done, self._current = self._done + self._current, Counts()

    @property
    def total(self) -> Counts:
        """Everything every worker of the shard reported, up to its last heartbeat."""
        return self._done + self._current
