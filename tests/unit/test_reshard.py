"""The resharding planner: split, merge and other shapes, and make-before-break coverage over any plan."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shardsync.supervisor.reshard import Move, Reshape, covered, describe, plan

ALL = frozenset


def test_split_four_to_eight_starts_two_children_per_old_shard() -> None:
    """4 -> 8: each old r is replaced by r and r+4, one old shard at a time, two extra connections at most."""
    p = plan(4, ALL(range(4)), 8, ALL(range(8)))
    assert p.shape is Reshape.SPLIT and p.exact
    assert p.moves == (Move((0, 4), (0,)), Move((1, 5), (1,)), Move((2, 6), (2,)), Move((3, 7), (3,)))
    assert p.max_extra == 2


def test_merge_eight_to_four_stops_two_parents_per_new_shard() -> None:
    """8 -> 4: each new r' replaces r' and r'+4, one extra connection at a time."""
    p = plan(8, ALL(range(8)), 4, ALL(range(4)))
    assert p.shape is Reshape.MERGE and p.exact
    assert p.moves == (Move((0,), (0, 4)), Move((1,), (1, 5)), Move((2,), (2, 6)), Move((3,), (3, 7)))
    assert p.max_extra == 1


def test_other_shape_is_one_move_all_new_then_all_old() -> None:
    """3 -> 4 (neither divides the other): start all four, then stop all three."""
    p = plan(3, ALL(range(3)), 4, ALL(range(4)))
    assert p.shape is Reshape.OTHER and p.exact
    assert p.moves == (Move((0, 1, 2, 3), (0, 1, 2)),)


def test_host_slice_split_is_exact() -> None:
    """A host running 1 and 3 of 4 goes to 1, 3, 5, 7 of 8: exact, one move per old shard."""
    p = plan(4, ALL({1, 3}), 8, ALL({1, 3, 5, 7}))
    assert p.exact and p.moves == (Move((1, 5), (1,)), Move((3, 7), (3,)))


def test_inexact_change_names_what_is_dropped_and_added() -> None:
    """New remainders that do not match the old accounts are reported, and the drop comes last."""
    p = plan(4, ALL({0, 1}), 8, ALL({0, 1, 5, 2}))
    # Old 0 covers residues 0 and 4 (mod 8); only 0 stays: 4 is uncovered.  2 is new to this host.
    assert p.uncovered == (4,) and p.added == (2,)
    assert p.moves == (Move((2,), ()), Move((0,), (0,)), Move((1, 5), (1,)))
    assert describe(p.uncovered, p.modulus) == "account id % 8 in 4"
    gone = plan(4, ALL({0, 1}), 8, ALL({0, 4}))
    assert gone.moves[-1] == Move((), (1,)) and gone.uncovered == (1, 5)


def test_describe_clips_long_lists() -> None:
    """A long residue list is clipped in the log line."""
    assert describe(tuple(range(20)), 32, limit=3) == "account id % 32 in 0, 1, 2 and 17 more"


def test_same_divisor_is_not_a_reshard() -> None:
    """plan() refuses an unchanged divisor: that is the reload planner's job."""
    try:
        plan(4, ALL({0}), 4, ALL({0}))
    except ValueError:
        return
    raise AssertionError("no ValueError")


DIVISORS = st.sampled_from([1, 2, 3, 4, 5, 6, 8, 12, 16])


@st.composite
def changes(draw: st.DrawFn) -> tuple[int, frozenset[int], int, frozenset[int], frozenset[int]]:
    n = draw(DIVISORS)
    m = draw(DIVISORS.filter(lambda d: d != n))
    old = draw(st.frozensets(st.integers(0, n - 1)))
    new = draw(st.frozensets(st.integers(0, m - 1)))
    aborted = draw(st.frozensets(st.integers(0, 20)))
    return n, old, m, new, aborted


@settings(max_examples=400, deadline=None)
@given(changes())
def test_every_account_kept_at_every_point_of_any_plan(change: tuple[int, frozenset[int], int, frozenset[int],
                                                                      frozenset[int]]) -> None:
    """Carried out move by move, with any moves aborted, every account both configurations hold is always
    held by a running old shard or a live new one; an account only the old one holds until its drop."""
    n, old, m, new, aborted = change
    p = plan(n, old, m, new)
    modulus = p.modulus
    keep = covered(n, old, modulus) & covered(m, new, modulus)
    running_old, live_new = set(old), set[int]()
    dropped: set[int] = set()

    def check() -> None:
        held = covered(n, running_old, modulus) | covered(m, live_new, modulus)
        assert keep <= held
        assert covered(n, old, modulus) - dropped <= held

    for index, move in enumerate(p.moves):
        check()  # the move's new shards are starting: not live yet, nothing counted for them
        if index in aborted:
            continue  # a new shard failed: they are stopped, the old ones keep running
        live_new.update(move.start)
        check()
        for r in move.stop:
            running_old.discard(r)
            dropped |= covered(n, {r}, modulus) - covered(m, new, modulus)
        check()
    if not aborted & set(range(len(p.moves))):
        assert running_old == set() and live_new == set(new)
    # Every new shard is started by exactly one move, every old one stopped by exactly one.
    assert sorted(r for move in p.moves for r in move.start) == sorted(new)
    assert sorted(r for move in p.moves for r in move.stop) == sorted(old)
    if p.shape is Reshape.SPLIT:
        assert p.max_extra <= m // n
    elif p.shape is Reshape.MERGE:
        assert p.max_extra <= 1
    assert set(p.uncovered) == covered(n, old, modulus) - covered(m, new, modulus)
    assert set(p.added) == covered(m, new, modulus) - covered(n, old, modulus)
