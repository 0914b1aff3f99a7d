"""Unit tests for the readiness decision: READY=1 when every shard was live, or at the start timeout."""

from __future__ import annotations

from shardsync.supervisor.readiness import Ready, decide, due_at


def test_ready_at_once_when_every_shard_was_live() -> None:
    """With every shard live the decision is Ready immediately, long before the start timeout."""
    assert due_at(started=100.0, start_timeout=60.0, all_live=True) == 100.0
    assert decide(now=101.5, started=100.0, start_timeout=60.0, all_live=True) == Ready(all_live=True, after=1.5)


def test_ready_at_the_start_timeout_when_not_every_shard_is_live() -> None:
    """Without every shard live there is no decision before started + start_timeout, and Ready exactly then."""
    assert due_at(started=100.0, start_timeout=60.0, all_live=False) == 160.0
    assert decide(now=159.99, started=100.0, start_timeout=60.0, all_live=False) is None
    assert decide(now=160.0, started=100.0, start_timeout=60.0, all_live=False) == Ready(all_live=False, after=60.0)
