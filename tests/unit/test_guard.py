"""Unit tests for the mass-deletion guard: what one snapshot may delete on its own word, and what needs a second."""

from __future__ import annotations

import pytest

from shardsync.change import Key
from shardsync.worker.guard import MASS_MINIMUM, DeletionGuard


def keys(*idents: int) -> list[Key]:
    return [("order", i) for i in idents]


def test_a_few_deletions_apply_whatever_the_share() -> None:
    """Up to MASS_MINIMUM deletions apply at once even when they are all of a small shard."""
    guard = DeletionGuard(0.5)
    verdict = guard.judge(keys(*range(MASS_MINIMUM)), entities=MASS_MINIMUM)
    assert verdict.delete == keys(*range(MASS_MINIMUM)) and not verdict.resync and guard.suspects is None


def test_many_deletions_below_the_ratio_apply() -> None:
    """More than the minimum but not more than the ratio of the shard: applied, no second look."""
    guard = DeletionGuard(0.5)
    verdict = guard.judge(keys(*range(50)), entities=100)
    assert verdict.delete == keys(*range(50)) and not verdict.resync


def test_a_mass_deletion_is_held_as_suspects_and_asks_for_a_resync() -> None:
    """Over the ratio and the minimum: nothing deleted, every deletion a suspect, a resync asked for."""
    guard = DeletionGuard(0.5)
    verdict = guard.judge(keys(*range(51)), entities=100)
    assert verdict.delete == [] and verdict.resync and verdict.suspected == 51 and not verdict.second_look
    assert guard.suspects == frozenset(keys(*range(51)))


def test_a_second_snapshot_that_has_them_refuses_the_suspects() -> None:
    """The next snapshot lacks none of the suspects: all refused, nothing deleted, suspects forgotten."""
    guard = DeletionGuard(0.5)
    guard.judge(keys(*range(80)), entities=100)
    verdict = guard.judge([], entities=100)
    assert verdict.delete == [] and verdict.refused == 80 and verdict.confirmed == 0 and verdict.second_look
    assert not verdict.resync and guard.suspects is None


def test_a_second_snapshot_that_agrees_confirms_them() -> None:
    """The next snapshot lacks the suspects too (and a few new ones): all of it is deleted."""
    guard = DeletionGuard(0.5)
    guard.judge(keys(*range(80)), entities=100)
    verdict = guard.judge(keys(*range(83)), entities=103)
    assert verdict.delete == keys(*range(83)) and verdict.confirmed == 80 and verdict.refused == 0
    assert not verdict.resync


def test_partial_agreement_deletes_only_the_agreed_part() -> None:
    """Of the suspects only those the second snapshot also lacks are deleted; the rest are refused."""
    guard = DeletionGuard(0.5)
    guard.judge(keys(*range(80)), entities=100)
    verdict = guard.judge(keys(*range(30)), entities=100)
    assert verdict.delete == keys(*range(30)) and verdict.confirmed == 30 and verdict.refused == 50


def test_a_new_mass_deletion_on_the_second_look_deletes_nothing_and_suspects_all_of_it() -> None:
    """A second snapshot lacking a different mass: not even its confirmed part goes; all it lacks is suspect."""
    guard = DeletionGuard(0.3)
    guard.judge(keys(*range(60)), entities=100)
    second = keys(*range(30, 100))
    verdict = guard.judge(second, entities=100)
    assert verdict.delete == [] and verdict.resync and verdict.confirmed == 30 and verdict.refused == 30
    assert guard.suspects == frozenset(second)
    third = guard.judge(second, entities=100)
    assert third.delete == second and third.confirmed == 70 and not third.resync


def test_ratio_one_never_holds_back() -> None:
    """max_resync_delete_ratio 1.0: a snapshot can never delete more than all, so the guard never fires."""
    guard = DeletionGuard(1.0)
    assert guard.judge(keys(*range(100)), entities=100).delete == keys(*range(100))


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_a_ratio_outside_0_1_is_refused(ratio: float) -> None:
    """The ratio is a share: (0, 1]."""
    with pytest.raises(ValueError, match="ratio"):
        DeletionGuard(ratio)
