"""The mirror attributes every change to its account: directly, or through the parent chain (a fill via its order)."""

from __future__ import annotations

from typing import Any

from shardsync.change import Change
from shardsync.mirror import Key, Mirror, key_of

T = "2024-01-01T00:00:00.000Z"


def snap(*pairs: tuple[str, dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    return {key_of(t, e): e for t, e in pairs}


def accounts(changes: list[Change]) -> list[tuple[str, str, int | None, int | None]]:
    return [(c.entity_type, c.event_type, c.id, c.account_id) for c in changes]


def test_live_changes_carry_their_own_account() -> None:
    """accountId-carrying types use it, account-keyed types their id, types with no account None (not counted)."""
    m = Mirror()
    changes = []
    changes += m.diff_event("position", "Created", [{"id": 1, "accountId": 7}], received_at=T)
    changes += m.diff_event("accountRiskStatus", "Updated", [{"id": 7, "adminAction": "Normal"}], received_at=T)
    changes += m.diff_event("contract", "Created", [{"id": 5, "name": "ESZ6"}], received_at=T)
    changes += m.diff_event("cashBalance", "Created", [{"id": 2, "accountId": True}], received_at=T)
    assert accounts(changes) == [
        ("position", "Created", 1, 7),
        ("accountRiskStatus", "Updated", 7, 7),
        ("contract", "Created", 5, None),
        ("cashBalance", "Created", 2, None),
    ]
    assert m.unattributed == 0


def test_a_fill_is_attributed_through_its_order() -> None:
    """A live fill takes its order's accountId, pending or committed, and its deletion too."""
    m = Mirror([("order", 10, {"id": 10, "accountId": 7})])
    m.diff_event("order", "Created", [{"id": 11, "accountId": 8}], received_at=T)  # pending only
    changes = m.diff_event("fill", "Created", [{"id": 1, "orderId": 10}], received_at=T)
    changes += m.diff_event("fill", "Created", [{"id": 2, "orderId": 11}, {"id": 3, "orderId": 10}], received_at=T)
    m.commit()
    changes += m.diff_event("fill", "Deleted", [{"id": 1, "orderId": 10}], received_at=T)
    assert accounts(changes) == [
        ("fill", "Created", 1, 7),
        ("fill", "Created", 2, 8),
        ("fill", "Created", 3, 7),
        ("fill", "Deleted", 1, 7),
    ]
    assert m.unattributed == 0


def test_a_fill_of_an_unknown_order_is_null_and_counted() -> None:
    """A fill whose order the mirror does not hold gets None and increments unattributed; no-ops count nothing."""
    m = Mirror()
    changes = m.diff_event("fill", "Created", [{"id": 1, "orderId": 99}], received_at=T)
    changes += m.diff_event("fill", "Updated", [{"id": 2}], received_at=T)
    assert accounts(changes) == [("fill", "Created", 1, None), ("fill", "Updated", 2, None)]
    assert m.unattributed == 2
    m.commit()
    assert m.diff_event("fill", "Created", [{"id": 1, "orderId": 99}], received_at=T) == []
    assert m.diff_event("fill", "Deleted", [{"id": 50, "orderId": 99}], received_at=T) == []
    assert m.unattributed == 2


def test_longer_chains_resolve() -> None:
    """commandReport -> command -> order and fillFee -> fill -> order and fillPair -> position reach the account."""
    m = Mirror(
        [
            ("order", 10, {"id": 10, "accountId": 7}),
            ("command", 20, {"id": 20, "orderId": 10}),
            ("fill", 30, {"id": 30, "orderId": 10}),
            ("position", 40, {"id": 40, "accountId": 9}),
        ]
    )
    changes = m.diff_event("commandReport", "Created", [{"id": 1, "commandId": 20}], received_at=T)
    changes += m.diff_event("fillFee", "Created", [{"id": 30, "commission": 1.2}], received_at=T)
    changes += m.diff_event("fillPair", "Created", [{"id": 2, "positionId": 40}], received_at=T)
    assert [c.account_id for c in changes] == [7, 7, 9]


def test_snapshot_attributes_a_fill_whose_order_comes_later_in_it() -> None:
    """In a snapshot the parent may follow the child; the fill still gets the order's account, uncounted."""
    m = Mirror()
    changes = m.diff_snapshot(
        snap(("fill", {"id": 1, "orderId": 10}), ("order", {"id": 10, "accountId": 7}),
             ("fill", {"id": 2, "orderId": 77})),
        types=None,
        received_at=T,
    )
    assert accounts(changes) == [("fill", "Created", 1, 7), ("order", "Created", 10, 7), ("fill", "Created", 2, None)]
    assert m.unattributed == 1


def test_snapshot_deletions_are_attributed_before_their_parents_go() -> None:
    """A fill and its order vanishing in the same resync are both Deleted with the order's account."""
    m = Mirror([("order", 10, {"id": 10, "accountId": 7}), ("fill", 1, {"id": 1, "orderId": 10})])
    changes = m.diff_snapshot({}, types=None, received_at=T)
    assert accounts(changes) == [("fill", "Deleted", 1, 7), ("order", "Deleted", 10, 7)]
    assert m.unattributed == 0


def test_system_events_take_an_account_from_their_payload() -> None:
    """A system event whose payload names an integer accountId carries it; other payloads None."""
    m = Mirror()
    assert m.system("adminAlertSignal", {"accountId": 7, "text": "x"}, received_at=T).account_id == 7
    assert m.system("adminAlertSignal", [1, 2], received_at=T).account_id is None
    assert m.system("shutdown", {"accountId": "7"}, received_at=T).account_id is None
