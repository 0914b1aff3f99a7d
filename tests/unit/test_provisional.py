"""Unit tests for provisional deletions: held until the grace ends, settled by live news, dropped with the session."""

from __future__ import annotations

from shardsync.worker.provisional import Provisional

T = "2024-01-01T00:00:00.000Z"


def held(*idents: int, until: float = 10.0) -> Provisional:
    p = Provisional()
    p.hold([("order", i) for i in idents], until=until, origin="resync", received_at=T)
    return p


def test_held_deletions_are_due_when_the_grace_ends() -> None:
    """Nothing is due before ``until``; then take() hands the keys out sorted and holds nothing more."""
    p = held(3, 1, 2)
    assert len(p) == 3 and p.deadline() == 10.0
    assert not p.due(9.99) and p.due(10.0)
    assert p.take() == [("order", 1), ("order", 2), ("order", 3)]
    assert not p and p.deadline() is None and not p.due(100.0)
    assert (p.origin, p.received_at) == ("resync", T)


def test_live_news_of_a_held_key_settles_its_deletion() -> None:
    """Any live event of a held key takes it out (counted); other keys and types are untouched."""
    p = held(1, 2)
    p.touch("order", [{"id": 1}, {"id": 9}])
    p.touch("position", [{"id": 2}])
    assert ("order", 1) not in p and ("order", 2) in p and p.overtaken == 1
    p.touch("order", [{"id": 2}])
    assert not p and p.deadline() is None and not p.due(100.0)


def test_drop_forgets_everything() -> None:
    """A session that ends drops its held deletions, never due afterwards."""
    p = held(1, 2)
    assert p.drop() == 2
    assert not p and not p.due(100.0) and p.take() == []


def test_a_new_hold_replaces_the_old_one() -> None:
    """Each snapshot holds its own deletions: a second hold starts over with its own deadline and count."""
    p = held(1, 2)
    p.touch("order", [{"id": 1}])
    p.hold([("order", 5)], until=20.0, origin="snapshot", received_at="later")
    assert p.take() == [("order", 5)] and p.origin == "snapshot" and p.overtaken == 0
