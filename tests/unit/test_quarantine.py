"""Unit tests for the quarantine rules: what a sink can store, and what is kept of an entity it cannot."""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson
import pytest

from shardsync import quarantine as q
from shardsync.change import Change
from shardsync.mirror import Mirror, MirrorError, key_of


def nested(depth: int, leaf: Any = None) -> Any:
    """``depth`` levels of lists (``nested(1)`` is ``[]``), built without recursion."""
    value: Any = [] if leaf is None else [leaf]
    for _ in range(depth - 1):
        value = [value]
    return value


def test_max_depth_is_what_orjson_writes_inside_a_jsonl_line() -> None:
    """An entity MAX_DEPTH deep serialises inside one wrapping object (the jsonl line); one level more does not."""
    ok = {"id": 1, "text": nested(q.MAX_DEPTH - 1)}
    assert not q.too_deep(ok)
    orjson.dumps({"entity": ok})
    bad = {"id": 1, "text": nested(q.MAX_DEPTH)}
    assert q.too_deep(bad)
    with pytest.raises(TypeError):
        orjson.dumps({"entity": bad})


def test_too_deep_is_iterative_and_exact() -> None:
    """too_deep walks 100,000 levels without recursion and counts a container as one level, scalars as none."""
    assert q.too_deep(nested(100_000), 99_999)
    assert not q.too_deep(nested(100_000), 100_000)
    assert not q.too_deep({"a": 1, "b": "x"}, 1)
    assert q.too_deep({"a": {}}, 1) and not q.too_deep({"a": {}}, 2)
    assert not q.too_deep("no container", 0)
    assert q.too_deep([1, 2, {"x": [3]}], 2) and not q.too_deep([1, 2, {"x": [3]}], 3)


@pytest.mark.parametrize(
    ("entity", "link", "reason"),
    [
        ({"id": 1}, None, None),
        ({"id": 2**63 - 1, "accountId": -(2**63)}, None, None),
        ([{"id": 1}], None, "not an object"),
        (None, None, "not an object"),
        ({"id": True}, None, "id is not an integer"),
        ({"id": "7"}, None, "id is not an integer"),
        ({"id": 2**63}, None, "id outside signed 64-bit"),
        ({"id": -(2**63) - 1}, None, "id outside signed 64-bit"),
        ({"id": 1, "accountId": 2**63}, None, "accountId outside signed 64-bit"),
        ({"id": 1, "accountId": "x"}, None, None),  # not an account id at all: unattributed, still storable
        ({"id": 1, "orderId": 2**64 - 1}, "orderId", "orderId outside signed 64-bit"),
        ({"id": 1, "orderId": 2**64 - 1}, None, None),  # a field the type is not attributed through
    ],
)
def test_problem_names_what_a_sink_could_not_store(entity: object, link: str | None, reason: str | None) -> None:
    """problem() refuses non-objects, non-integer ids and ids, accountIds and parent links outside int64."""
    assert q.problem(entity, link) == reason


def test_the_limits_are_the_sinks_limits() -> None:
    """INT64_MAX binds as an SQLite INTEGER and INT64_MAX + 1 does not: the range is the column's."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id INTEGER)")
    conn.execute("INSERT INTO t VALUES (?)", (q.INT64_MAX,))
    conn.execute("INSERT INTO t VALUES (?)", (q.INT64_MIN,))
    with pytest.raises(OverflowError):
        conn.execute("INSERT INTO t VALUES (?)", (q.INT64_MAX + 1,))
    assert q.LINKS["fill"] == "orderId" and q.LINKS["fillPair"] == "positionId" and "fillFee" not in q.LINKS


def test_render_is_bounded_and_never_recurses() -> None:
    """render() gives JSON-like text cut at the limit for any depth and size, and marks the cut."""
    assert q.render({"id": 1, "a": [1, None, {"b": "x"}]}) == '{"id":1,"a":[1,null,{"b":"x"}]}'
    deep = q.render({"id": 5, "text": nested(50_000)}, 60)
    assert deep.startswith('{"id":5,"text":[[[') and deep.endswith("…") and len(deep) == 61
    wide = q.render(list(range(1_000_000)), 30)
    assert len(wide) == 31
    assert q.render("a\nb\x00" * 5, 12) == '"a\\nb\\u0000a…'
    assert q.render(object(), 20) == "object"


def test_a_refused_entity_is_kept_whole_when_it_fits_in_its_record() -> None:
    """A bad-id entity of ordinary depth is kept whole in the record, with the reason and an excerpt."""
    entity = {"id": 2**63, "accountId": 7, "text": "hello"}
    refusal = q.refuse("order", "Created", entity, "id outside signed 64-bit")
    assert refusal.id is None and refusal.account_id() == 7
    assert refusal.key == "order 9223372036854775808"
    record = refusal.record()
    assert record == {"reason": "id outside signed 64-bit", "excerpt": orjson.dumps(entity).decode(), "entity": entity}
    orjson.dumps({"line": {"entity": record}})  # a jsonl line of it


def test_a_too_deep_entity_keeps_only_its_scalar_fields() -> None:
    """An entity nested beyond the limit is recorded by its top-level scalars and an excerpt: storable, bounded."""
    entity = {"id": 9, "accountId": 3, "text": nested(900), "n": {"x": 1}}
    refusal = q.refuse("order", "Updated", entity, q.TOO_DEEP)
    assert refusal.entity is None and refusal.fields == {"id": 9, "accountId": 3}
    assert refusal.id == 9 and refusal.account_id() == 3
    record = refusal.record()
    assert record["fields"] == {"id": 9, "accountId": 3} and "entity" not in record
    assert len(record["excerpt"]) <= q.EXCERPT + 1
    orjson.dumps({"line": {"entity": record}})


def test_an_entity_one_level_under_the_limit_is_kept_as_fields_too() -> None:
    """The record wraps the entity one level deeper, so a bad-id entity MAX_DEPTH deep keeps only its fields."""
    entity = {"id": "x", "text": nested(q.MAX_DEPTH - 1)}
    refusal = q.refuse("order", "Created", entity, q.ID_NOT_INT)
    assert refusal.entity is None and refusal.fields == {"id": "x"}
    orjson.dumps({"line": {"entity": refusal.record()}})


def test_an_unreadable_entity_is_refused_with_its_fields() -> None:
    """An Unreadable (salvage) becomes a Refusal with its reason, excerpt and the scalars salvage read."""
    marker = q.Unreadable('{"id":4,"t":[[[[…', "unreadable JSON (depth limit exceeded)", {"id": 4, "accountId": 2})
    refusal = q.refuse("order", "Snapshot", marker, "ignored")
    assert refusal.reason == "unreadable JSON (depth limit exceeded)"
    assert refusal.excerpt == marker.excerpt and refusal.id == 4 and refusal.account_id() == 2
    assert refusal.record()["fields"] == {"id": 4, "accountId": 2}


def test_account_keyed_types_take_their_account_from_the_id() -> None:
    """A refused account's account is its own id when storable, else none."""
    assert q.refuse("account", "Created", {"id": 12, "x": nested(300)}, q.TOO_DEEP).account_id() == 12
    assert q.refuse("account", "Created", {"id": 2**63}, "id outside signed 64-bit").account_id() is None


def test_held_keeps_what_the_mirror_has_for_refused_snapshot_keys() -> None:
    """held() maps each refused snapshot entity with a storable id, absent from the snapshot, to its stored version."""
    stored = {("order", 1): {"id": 1, "v": 1}, ("order", 2): {"id": 2, "v": 1}}
    refused = [
        q.refuse("order", q.SNAPSHOT, {"id": 1, "t": nested(300)}, q.TOO_DEEP),
        q.refuse("order", q.SNAPSHOT, {"id": 3, "t": nested(300)}, q.TOO_DEEP),  # never stored
        q.refuse("order", q.SNAPSHOT, {"id": 2, "t": nested(300)}, q.TOO_DEEP),  # also in the snapshot, good
        q.refuse("order", "Updated", {"id": 1, "t": nested(300)}, q.TOO_DEEP),  # live: not the snapshot's
    ]
    snapshot = {("order", 2): {"id": 2, "v": 2}}
    assert q.held(refused, stored.get, snapshot) == {("order", 1): {"id": 1, "v": 1}}


def test_mirror_rejected_change_is_attributed_and_leaves_state_alone() -> None:
    """Mirror.rejected builds an origin=rejected change, attributed like any (a fill through its order)."""
    mirror = Mirror([("order", 5, {"id": 5, "accountId": 70})])
    fill = q.refuse("fill", "Created", {"id": 2**63, "orderId": 5}, "id outside signed 64-bit")
    change = mirror.rejected(fill, received_at="T")
    assert change == Change("rejected", "fill", "Created", None, fill.record(), "T", 70)
    big = q.refuse("order", "Created", {"id": 1, "accountId": 2**63}, "accountId outside signed 64-bit")
    assert mirror.rejected(big, received_at="T").account_id is None
    assert dict(mirror.items()) == {("order", 5): {"id": 5, "accountId": 70}} and mirror.pending == 0
    assert mirror.unattributed == 0


def test_mirror_system_does_not_attribute_an_unstorable_account() -> None:
    """A system payload with accountId >= 2**63 is kept without an account (the column could not hold it)."""
    mirror = Mirror()
    assert mirror.system("alert", {"accountId": 2**63}, received_at="T").account_id is None
    assert mirror.system("alert", {"accountId": 8}, received_at="T").account_id == 8


def test_key_of_refuses_an_id_no_column_holds() -> None:
    """The mirror's own check (for callers other than the codec) refuses ids outside int64 too."""
    assert key_of("order", {"id": 2**63 - 1}) == ("order", 2**63 - 1)
    with pytest.raises(MirrorError, match="outside signed 64-bit"):
        key_of("order", {"id": 2**63})
