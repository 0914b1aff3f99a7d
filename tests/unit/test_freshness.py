"""Unit tests for the worker's freshness row: the state mapping, sessions, and times carried until written."""

from __future__ import annotations

import pytest

from shardsync.ipc import ShardState
from shardsync.sinks import Freshness, SinkState
from shardsync.worker.freshness import StatusRow, sink_state

E = 1_714_564_800.0  # 2024-05-01T12:00:00Z


@pytest.mark.parametrize(
    ("state", "synced", "expected"),
    [
        (ShardState.STARTING, False, SinkState.SYNCING),
        (ShardState.WAITING_TOKEN, False, SinkState.SYNCING),
        (ShardState.WAITING_PERMIT, False, SinkState.SYNCING),
        (ShardState.CONNECTING, False, SinkState.SYNCING),
        (ShardState.AUTHORIZING, False, SinkState.SYNCING),
        (ShardState.SYNCING, False, SinkState.SYNCING),
        (ShardState.BACKOFF, False, SinkState.BACKOFF),
        (ShardState.STARTING, True, SinkState.RESYNCING),
        (ShardState.CONNECTING, True, SinkState.RESYNCING),
        (ShardState.AUTHORIZING, True, SinkState.RESYNCING),
        (ShardState.SYNCING, True, SinkState.RESYNCING),
        (ShardState.WAITING_TOKEN, True, SinkState.BACKOFF),
        (ShardState.WAITING_PERMIT, True, SinkState.BACKOFF),
        (ShardState.BACKOFF, True, SinkState.BACKOFF),
        (ShardState.LIVE, True, SinkState.LIVE),
        (ShardState.STOPPING, True, SinkState.STOPPED),
        (ShardState.STOPPING, False, SinkState.STOPPED),
    ],
)
def test_worker_states_map_to_sink_states(state: ShardState, synced: bool, expected: SinkState) -> None:
    """Before a first snapshot short of live is syncing; after one resyncing; waits backoff; the way out stopped."""
    assert sink_state(state, synced) is expected


def test_rows_carry_the_previous_workers_times_and_session_until_known_better() -> None:
    """A new worker's first row repeats what its predecessor wrote, with its own state."""
    previous = Freshness(3, 16, "modAccountId", SinkState.LIVE, "2024-05-01T11:00:00.000Z",
                         "2024-05-01T11:59:59.000Z", "2024-05-01T11:59:58.000Z", "old")
    status = StatusRow(3, 16, "modAccountId", previous)
    row = status.row(SinkState.RESYNCING, event_at=None)
    assert row == Freshness(3, 16, "modAccountId", SinkState.RESYNCING, previous.snapshot_at,
                            previous.last_event_at, previous.last_commit_at, "old")
    other = StatusRow(4, 16, "modAccountId", previous)  # not this shard's row: nothing carried
    assert other.row(SinkState.SYNCING, event_at=None).session == ""


def test_a_snapshot_commit_sets_snapshot_at_and_later_commits_keep_it() -> None:
    """snapshot_at is the reconcile batch's commit; last_commit_at moves with every batch; times are ISO UTC."""
    status = StatusRow(0, 1, "modAccountId", session_id=lambda: "s1")
    status.new_session()
    row = status.row(SinkState.LIVE, event_at=E + 0.5, commit_at=E + 1, snapshot_at=E + 1)
    assert (row.snapshot_at, row.last_event_at, row.last_commit_at, row.session) == (
        "2024-05-01T12:00:01.000Z", "2024-05-01T12:00:00.500Z", "2024-05-01T12:00:01.000Z", "s1")
    status.wrote(row, 10.0, E + 0.5)
    later = status.row(SinkState.LIVE, event_at=E + 2, commit_at=E + 3)
    assert later.snapshot_at == "2024-05-01T12:00:01.000Z" and later.last_commit_at == "2024-05-01T12:00:03.000Z"


def test_nothing_is_remembered_from_a_row_never_written() -> None:
    """A row built for a write that failed leaves the carried times where they were."""
    status = StatusRow(0, 1, "modAccountId")
    status.row(SinkState.LIVE, event_at=E, commit_at=E, snapshot_at=E)
    assert status.row(SinkState.LIVE, event_at=None) == Freshness(0, 1, "modAccountId", SinkState.LIVE, None, None,
                                                                 None, "")
    assert status.written is None


def test_stale_when_the_state_or_the_session_changed_since_the_last_write() -> None:
    """A new session makes the written row stale even in the same state."""
    ids = iter(["a", "b"])
    status = StatusRow(0, 1, "modAccountId", session_id=lambda: next(ids))
    assert status.stale(SinkState.SYNCING)
    status.new_session()
    status.wrote(status.row(SinkState.RESYNCING, event_at=None), 1.0, None)
    assert not status.stale(SinkState.RESYNCING) and status.stale(SinkState.LIVE)
    status.new_session()
    assert status.stale(SinkState.RESYNCING)


def test_the_fast_iso_clock_writes_what_iso_utc_writes() -> None:
    """IsoClock gives the sinks' time text exactly, across seconds, milliseconds and rounding edges."""
    from shardsync.sinks.base import iso_utc
    from shardsync.worker.freshness import IsoClock

    iso = IsoClock()
    samples = [E, E + 0.5, E + 0.9994999, E + 0.9999996, E + 1.0005, E + 59.999, E + 86_399.9999999, 0.0, 1.25]
    samples += [E + n * 0.0137 for n in range(2000)]
    for seconds in samples:
        assert iso(seconds) == iso_utc(seconds), seconds
