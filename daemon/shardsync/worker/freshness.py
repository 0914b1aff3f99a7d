"""The shard's freshness row (``shard_status``) as its worker writes it: which state, which session, which times.

Pure: the batch writes the rows this module builds, and tells it which one
was written.  States (``sinks.base.SinkState``) follow the worker's own:
before the sink's first snapshot ever everything short of live is
``syncing``; after one, connecting, authorizing and syncing are
``resyncing``; ``live`` is live; a backoff, and waiting for a token or a
permit, is ``backoff``; the way out is ``stopped``.  A new ``session`` id
is drawn at every syncrequest; ``snapshot_at`` is the commit time of the
batch that reconciled the last snapshot, ``last_event_at`` the wall clock
of the last frame, ``last_commit_at`` that of the last written batch.
What the previous worker of the shard wrote is carried forward until this
one knows better.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from shardsync.ipc import ShardState
from shardsync.sinks.base import Freshness, SinkState

_WAITING = frozenset({ShardState.WAITING_TOKEN, ShardState.WAITING_PERMIT})
_STOPPED = frozenset({ShardState.STOPPING, ShardState.STOPPED})


def sink_state(state: ShardState, synced: bool) -> SinkState:
    """The ``shard_status`` state of a worker in ``state`` whose sink has (``synced``) or lacks a first snapshot."""
    if state is ShardState.LIVE:
        return SinkState.LIVE
    if state in _STOPPED:
        return SinkState.STOPPED
    if state is ShardState.BACKOFF or (synced and state in _WAITING):
        return SinkState.BACKOFF
    return SinkState.RESYNCING if synced else SinkState.SYNCING


def new_session_id() -> str:
    return secrets.token_hex(8)


class IsoClock:
    """``sinks.base.iso_utc`` at a fraction of its cost: a row is built for every batch, on the hot path.

    The date and time to the second are formatted once per second; like
    ``datetime.fromtimestamp`` the value is first rounded to the microsecond,
    then cut to milliseconds, so both give the same text.
    """

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second: int | None = None
        self._prefix = ""

    def __call__(self, seconds: float) -> str:
        micros = round(seconds * 1_000_000)
        second, fraction = divmod(micros, 1_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{fraction // 1000:03d}Z"


class StatusRow:
    """Builds each row to write and remembers what was written last (and when, on the worker's clock)."""

    def __init__(
        self,
        remainder: int,
        divisor: int,
        expression: str,
        previous: Freshness | None = None,
        *,
        session_id: Callable[[], str] = new_session_id,
    ) -> None:
        self._remainder = remainder
        self._divisor = divisor
        self._expression = expression
        self._session_id = session_id
        self._iso = IsoClock()
        carried = previous if previous is not None and (previous.remainder, previous.divisor) == (
            remainder, divisor) else None
        self.session = carried.session if carried is not None else ""
        self.snapshot_at = carried.snapshot_at if carried is not None else None
        self.last_event_at = carried.last_event_at if carried is not None else None
        self.last_commit_at = carried.last_commit_at if carried is not None else None
        #: The state of the row written last (None: none yet), its session and when (worker clock).
        self.written: SinkState | None = None
        self.written_session: str | None = None
        self.written_at = float("-inf")
        self._event_seconds: float | None = None

    def new_session(self) -> str:
        """A syncrequest goes out: the rows that follow describe a new session."""
        self.session = self._session_id()
        return self.session

    def row(
        self,
        state: SinkState,
        *,
        event_at: float | None,
        commit_at: float | None = None,
        snapshot_at: float | None = None,
    ) -> Freshness:
        """The row to write now: ``event_at`` is the last frame's wall clock, ``commit_at`` this batch's (if one),
        ``snapshot_at`` given when this write completes a snapshot (its batch's commit, or the row alone when
        the snapshot changed nothing).

        Nothing is remembered until :meth:`wrote` (a failed write must not move the times on).
        """
        last_event_at = self.last_event_at
        if event_at is not None and event_at != self._event_seconds:
            last_event_at = self._iso(event_at)
        last_commit_at = self.last_commit_at if commit_at is None else self._iso(commit_at)
        if snapshot_at is None:
            snapshot_iso = self.snapshot_at
        else:
            snapshot_iso = last_commit_at if snapshot_at == commit_at else self._iso(snapshot_at)
        return Freshness(self._remainder, self._divisor, self._expression, state, snapshot_iso, last_event_at,
                         last_commit_at, self.session)

    def stale(self, state: SinkState) -> bool:
        """Whether the row last written says something else than ``state`` in this session."""
        return state != self.written or self.session != self.written_session

    def wrote(self, row: Freshness, at: float, event_at: float | None) -> None:
        """``row`` is in the sink (written at ``at`` on the worker's clock)."""
        self.written = row.state
        self.written_session = row.session
        self.written_at = at
        self.snapshot_at = row.snapshot_at
        self.last_event_at = row.last_event_at
        self.last_commit_at = row.last_commit_at
        if event_at is not None:
            self._event_seconds = event_at
