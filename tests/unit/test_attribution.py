"""Account attribution through parents held as JSON text: exact whatever the mirror did, and parsed once."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from shardsync import attribution
from shardsync.attribution import Attribution
from shardsync.change import Key
from shardsync.mirror import Mirror

T = "2026-12-01T00:00:00.000Z"


class Held:
    """Slots by key, and how many times a slot was parsed."""

    def __init__(self, **entities: dict[str, Any]) -> None:
        self.slots: dict[Key, str] = {}
        self.parses = 0
        for name, entity in entities.items():
            self.put(name, entity)

    def put(self, name: str, entity: dict[str, Any]) -> str:
        text = orjson.dumps(entity).decode()
        self.slots[(name.rstrip("0123456789"), entity["id"])] = text
        return text

    def parse(self, slot: str) -> dict[str, Any]:
        self.parses += 1
        parsed: dict[str, Any] = orjson.loads(slot)
        return parsed


def test_children_of_one_parent_parse_it_once() -> None:
    """Two fills of one order read the order's text once; the chain commandReport -> command -> order too."""
    held = Held(order1={"id": 1, "accountId": 7}, command1={"id": 5, "orderId": 1})
    owners = Attribution(held.slots.get, held.parse)
    assert owners.account("fill", {"id": 10, "orderId": 1}) == 7
    assert owners.account("fill", {"id": 11, "orderId": 1}) == 7
    assert held.parses == 1
    assert owners.account("commandReport", {"id": 20, "commandId": 5}) == 7
    assert owners.account("commandReport", {"id": 21, "commandId": 5}) == 7
    assert held.parses == 2 and owners.unattributed == 0


def test_a_parent_held_as_another_text_is_read_again() -> None:
    """Once the key holds another text object (an update, a rollback), what the memo says of it is not used."""
    held = Held(order1={"id": 1, "accountId": 7})
    owners = Attribution(held.slots.get, held.parse)
    assert owners.account("fill", {"id": 10, "orderId": 1}) == 7
    held.put("order", {"id": 1, "accountId": 8})
    assert owners.account("fill", {"id": 10, "orderId": 1}) == 8
    assert held.parses == 2


def test_seen_saves_the_parse_and_only_parents_are_remembered() -> None:
    """A parent's text just parsed by the mirror is remembered with it; a child type is not kept at all."""
    held = Held()
    owners = Attribution(held.slots.get, held.parse)
    order = {"id": 1, "accountId": 7}
    owners.seen(("order", 1), held.put("order", order), order)
    owners.seen(("orderVersion", 3), held.put("orderVersion", {"id": 3, "orderId": 1}), {"id": 3, "orderId": 1})
    assert owners.account("fill", {"id": 10, "orderId": 1}) == 7
    assert held.parses == 0 and len(owners._memo) == 1


def test_unknown_parents_count_and_an_ownerless_chain_end_does_not() -> None:
    """A missing parent counts as unattributed (not for refusals); an order without an account gives None uncounted."""
    held = Held(order1={"id": 1})
    owners = Attribution(held.slots.get, held.parse)
    assert owners.account("fill", {"id": 10, "orderId": 2}) is None
    assert owners.through_parent("fill", {"id": 10, "orderId": 2}, count=False) is None
    assert owners.unattributed == 1
    assert owners.account("fill", {"id": 10, "orderId": 1}) is None and owners.unattributed == 1
    assert owners.account("user", {"id": 3}) is None and owners.unattributed == 1


def test_the_memo_is_bounded() -> None:
    """trim() empties a memo grown past MEMO_LIMIT and leaves a smaller one alone."""
    held = Held()
    owners = Attribution(held.slots.get, held.parse)
    for ident in range(attribution.MEMO_LIMIT + 1):
        owners.seen(("order", ident), "{}", {"id": ident, "accountId": 1})
    owners.trim()
    assert not owners._memo
    owners.seen(("order", 1), "{}", {"id": 1, "accountId": 1})
    owners.trim()
    assert len(owners._memo) == 1


def test_a_rolled_back_parent_update_does_not_attribute_its_children() -> None:
    """After a batch updating an order is rolled back, a fill goes to the committed order's account."""
    m = Mirror([("order", 1, {"id": 1, "accountId": 7})])
    [update] = m.diff_event("order", "Updated", [{"id": 1, "accountId": 8}], received_at=T)
    assert update.account_id == 8
    m.rollback()
    [fill] = m.diff_event("fill", "Created", [{"id": 10, "orderId": 1}], received_at=T)
    assert fill.account_id == 7


def test_a_snapshot_remembers_only_the_parents_its_children_name_and_never_past_the_cap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Diffing a snapshot of orders leaves no memo (remembering each cost ~140 bytes, children or not); with fills,
    only their orders are remembered, never more than MEMO_CAP at once, and every fill still gets its account."""
    monkeypatch.setattr(attribution, "MEMO_CAP", 4)
    orders = {("order", n): orjson.dumps({"id": n, "accountId": 100 + n}).decode() for n in range(1, 21)}
    mirror = Mirror()
    mirror.diff_snapshot(orders, types=None, received_at=T)
    assert not mirror._owners._memo
    fills = {("fill", 1000 + n): orjson.dumps({"id": 1000 + n, "orderId": n}).decode() for n in range(1, 21, 2)}
    mirror = Mirror()
    changes = mirror.diff_snapshot({**orders, **fills}, types=None, received_at=T)
    assert [(c.id, c.account_id) for c in changes if c.entity_type == "fill"] == \
        [(1000 + n, 100 + n) for n in range(1, 21, 2)]
    assert 0 < len(mirror._owners._memo) <= 4
    assert mirror.unattributed == 0
