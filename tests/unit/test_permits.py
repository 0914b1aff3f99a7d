"""The connect permit gate: concurrency cap, spacing, release and expiry."""

from __future__ import annotations

import pytest

from shardsync.supervisor.permits import PermitGate


def test_at_most_max_concurrent_in_flight() -> None:
    """With 64 shards asking at once, never more than max_concurrent hold a permit."""
    gate = PermitGate(max_concurrent=2, spacing=0.0, hold_max=30)
    for r in range(64):
        gate.request(r, 0.0)
    assert gate.grant(0.0) == [0, 1]
    assert gate.grant(1.0) == []
    gate.report(0, "syncing")
    assert gate.grant(1.0) == [2]
    assert gate.in_flight == 2 and gate.peak == 2


def test_spacing_between_grants() -> None:
    """Permits are spaced by connect_spacing even when slots are free."""
    gate = PermitGate(max_concurrent=8, spacing=0.5, hold_max=30)
    for r in range(3):
        gate.request(r, 0.0)
    assert gate.grant(0.0) == [0]
    assert gate.grant(0.4) == []
    assert gate.next_at(0.4) == pytest.approx(0.5)
    assert gate.grant(0.5) == [1]
    assert gate.grant(1.0) == [2]


def test_handshake_states_keep_the_slot() -> None:
    """A holder reporting connecting/authorizing keeps its slot; live, backoff or syncing free it."""
    gate = PermitGate(max_concurrent=1, spacing=0.0, hold_max=30)
    gate.request(0, 0.0)
    gate.request(1, 0.0)
    assert gate.grant(0.0) == [0]
    gate.report(0, "authorizing")
    assert gate.grant(0.1) == []
    gate.report(0, "backoff")
    assert gate.grant(0.2) == [1]


def test_expiry_and_forget_free_slots() -> None:
    """A holder that never reports frees its slot after hold_max; an exited worker frees it at once."""
    gate = PermitGate(max_concurrent=1, spacing=0.0, hold_max=5)
    for r in range(3):
        gate.request(r, 0.0)
    assert gate.grant(0.0) == [0]
    assert gate.next_at(1.0) == 5.0
    assert gate.grant(5.0) == [1]
    gate.forget(1)
    assert gate.grant(5.1) == [2]


def test_fifo_and_no_duplicates() -> None:
    """Shards are served in the order they asked, and asking twice does not queue twice."""
    gate = PermitGate(max_concurrent=10, spacing=0.0, hold_max=5)
    for r in (3, 1, 3, 2):
        gate.request(r, 0.0)
    assert gate.grant(0.0) == [3, 1, 2]
    assert gate.next_at(0.0) == 5.0


def test_a_waiting_permit_beat_read_after_the_grant_keeps_the_slot() -> None:
    """A "waiting_permit" heartbeat the worker sent before its permit arrived does not free the slot."""
    gate = PermitGate(max_concurrent=1, spacing=0.0, hold_max=30)
    gate.request(0, 0.0)
    gate.request(1, 0.0)
    assert gate.grant(0.0) == [0]
    gate.report(0, "waiting_permit")  # still in the pipe when the parent granted
    assert gate.grant(0.1) == []
    gate.report(0, "syncing")
    assert gate.grant(0.2) == [1]


def test_reconfigure_keeps_waiting_and_holding_shards() -> None:
    """New limits from a reload keep the queue and the holders: a worker that asked before still gets its permit."""
    gate = PermitGate(max_concurrent=1, spacing=0.0, hold_max=10.0)
    gate.request(0, 0.0)
    gate.request(1, 0.0)
    assert gate.grant(0.0) == [0]
    gate.reconfigure(max_concurrent=2, spacing=0.0, hold_max=10.0)
    assert (gate.in_flight, gate.waiting) == (1, 1)
    assert gate.grant(0.1) == [1]
    with pytest.raises(ValueError, match="invalid"):
        gate.reconfigure(max_concurrent=0, spacing=0.0, hold_max=10.0)


def test_a_held_shard_keeps_its_place_and_the_next_grant_time_skips_holds_without_a_time() -> None:
    """hold: shard 1 held until t=10 and shard 2 held "until a change" (inf); shard 3 is granted now, shard 1 at
    t=10, and next_at never reports an infinite time."""
    gate = PermitGate(max_concurrent=4, spacing=0.0, hold_max=100.0)
    for remainder in (1, 2, 3):
        gate.request(remainder, 0.0)
    holds = {1: 10.0, 2: float("inf")}
    assert gate.grant(0.0, holds.get) == [3]
    assert gate.next_at(0.0, holds.get) == 10.0
    assert gate.grant(10.0, holds.get) == [1]
    assert gate.next_at(10.0, holds.get) == pytest.approx(min(0.0 + 100.0, 10.0 + 100.0))
    assert gate.grant(11.0, lambda r: None) == [2]
    assert gate.granted == 3
