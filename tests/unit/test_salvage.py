"""Unit tests for salvage: a frame orjson refuses, split along its structure, each refused part marked."""

from __future__ import annotations

import orjson
import pytest

from shardsync import protocol as p
from shardsync import salvage
from shardsync.quarantine import Unreadable

DEEP = b"[" * 2000 + b"]" * 2000


def props(entity: bytes, entity_type: bytes = b"order", event_type: bytes = b"Created") -> bytes:
    return (b'{"e":"props","d":{"entityType":"' + entity_type + b'","eventType":"' + event_type
            + b'","entity":' + entity + b"}}")


def test_orjson_refuses_what_salvage_is_for() -> None:
    """The premise: orjson parses nothing of a frame holding one value 2000 deep."""
    with pytest.raises(orjson.JSONDecodeError, match="depth limit exceeded"):
        orjson.loads(b"[" + props(b'{"id":1,"text":' + DEEP + b"}") + b"]")


def test_a_deep_props_entity_is_marked_and_the_rest_of_the_frame_kept() -> None:
    """One 2000-deep entity among good items: the items around it come out as orjson would give them."""
    raw = (b"a[" + props(b'{"id":1}') + b"," + props(b'{"id":2,"accountId":7,"text":' + DEEP + b"}")
           + b',{"e":"alert","d":{"x":1}}]')
    first, second, third = salvage.messages(raw)
    assert first == orjson.loads(props(b'{"id":1}'))
    assert third == {"e": "alert", "d": {"x": 1}}
    marked = second["d"]["entity"]
    assert isinstance(marked, Unreadable)
    assert marked.fields == {"id": 2, "accountId": 7}
    assert marked.reason == "unreadable JSON (depth limit exceeded)"
    assert marked.excerpt.startswith('{"id":2,"accountId":7,"text":[[[') and len(marked.excerpt) <= 121
    assert second["d"]["entityType"] == "order" and second["d"]["eventType"] == "Created"


def test_each_entity_of_a_props_list_is_judged_on_its_own() -> None:
    """In a props entity list only the deep element is marked; its siblings parse."""
    raw = b"a[" + props(b'[{"id":1},{"id":2,"t":' + DEEP + b'},{"id":3}]') + b"]"
    (item,) = salvage.messages(raw)
    one, two, three = item["d"]["entity"]
    assert one == {"id": 1} and three == {"id": 3}
    assert isinstance(two, Unreadable) and two.fields == {"id": 2}


def test_a_snapshot_response_loses_only_its_deep_entities() -> None:
    """In a snapshot response each deep entity is marked in its collection; other collections are untouched."""
    raw = (b'a[{"s":200,"i":1,"d":{"users":[{"id":1}],"orders":[{"id":1},{"id":2,"t":' + DEEP
           + b'},{"id":3}],"done":false}}]')
    (item,) = salvage.messages(raw)
    assert item["s"] == 200 and item["i"] == 1
    assert item["d"]["users"] == [{"id": 1}] and item["d"]["done"] is False
    orders = item["d"]["orders"]
    assert orders[0] == {"id": 1} and orders[2] == {"id": 3} and isinstance(orders[1], Unreadable)


def test_a_collection_that_is_no_array_is_marked_whole() -> None:
    """A collection value that is not an array and fails is one Unreadable (the whole collection)."""
    raw = b'a[{"s":200,"i":1,"d":{"users":[{"id":1}],"orders":{"x":' + DEEP + b"}}}]"
    (item,) = salvage.messages(raw)
    assert isinstance(item["d"]["orders"], Unreadable) and item["d"]["users"] == [{"id": 1}]


def test_another_event_is_marked_whole_and_a_non_object_item_too() -> None:
    """A system event's deep payload is one Unreadable; an item that is not an object is marked whole."""
    raw = b'a[{"e":"alert","d":{"a":' + DEEP + b"}}," + DEEP + b"]"
    event, whole = salvage.messages(raw)
    assert event["e"] == "alert" and isinstance(event["d"], Unreadable)
    assert isinstance(whole, Unreadable) and whole.fields == {}


def test_bad_utf8_in_one_entity_is_that_entitys_problem() -> None:
    """Invalid UTF-8 inside one snapshot entity marks that entity; the excerpt shows the bytes escaped."""
    raw = b'a[{"s":200,"i":1,"d":{"orders":[{"id":1,"t":"\xff\xfe"},{"id":2}]}}]'
    (item,) = salvage.messages(raw)
    bad, good = item["d"]["orders"]
    assert good == {"id": 2}
    assert isinstance(bad, Unreadable) and bad.fields == {"id": 1} and "\\xff" in bad.excerpt


def test_strings_with_brackets_and_escapes_do_not_confuse_the_scanner() -> None:
    """Brackets, commas, colons and escaped quotes inside strings are not structure."""
    tricky = b'{"id":1,"t":"a],[}{:\\",\\\\"}'
    raw = b"a[" + props(b"[" + tricky + b',{"id":2,"t":' + DEEP + b"}]") + b"]"
    (item,) = salvage.messages(raw)
    first, second = item["d"]["entity"]
    assert first == orjson.loads(tricky)
    assert isinstance(second, Unreadable)


@pytest.mark.parametrize(
    "raw",
    [
        b"a[",
        b"a[{]",
        b"a[1,]",
        b"a[,1]",
        b'a[{"a"}]',
        b'a["abc]',
        b'a[{"a":1 "b":2}]',
        b"a[1] x",
        b"a{}",
        b'a[{"a":1,}]',
        b"a[" + props(b'{"id":1,"t":' + DEEP),  # truncated
        b"a[" + props(b'{"id":1,"t":' + DEEP + b"]") + b"]",  # mismatched
    ],
)
def test_a_broken_structure_is_unscannable(raw: bytes) -> None:
    """Truncated frames, mismatched brackets and members without values raise Unscannable, nothing else."""
    with pytest.raises(salvage.Unscannable):
        salvage.messages(raw)


def test_the_codec_turns_salvaged_parts_into_messages_and_refusals() -> None:
    """decode_frame on a frame orjson refuses: good props stay props, the deep entity is a Rejected with its key."""
    raw = (b"a[" + props(b'{"id":1,"accountId":3}') + b"," + props(b'{"id":2,"accountId":3,"text":' + DEEP + b"}")
           + b',{"e":"alert","d":' + DEEP + b"}]")
    frame = p.decode_frame(raw)
    assert isinstance(frame, p.MessagesFrame)
    good, deep, alert = frame.messages
    assert good == p.PropsEvent("order", "Created", ({"id": 1, "accountId": 3},))
    assert isinstance(deep, p.Rejected) and isinstance(alert, p.Rejected)
    (refusal,) = deep.refused
    assert (refusal.entity_type, refusal.event_type, refusal.id, refusal.account_id()) == ("order", "Created", 2, 3)
    assert refusal.reason.startswith("unreadable JSON")
    (whole,) = alert.refused
    assert (whole.entity_type, whole.event_type, whole.id) == ("alert", "Event", None)


def test_a_broken_frame_is_still_a_protocol_error() -> None:
    """A truncated frame keeps failing as the ProtocolError it always was (orjson's message, the excerpt)."""
    raw = b"a[" + props(b'{"id":1,"t":' + DEEP)
    with pytest.raises(p.ProtocolError, match="invalid JSON in message frame") as info:
        p.decode_frame(raw)
    assert info.value.excerpt == p.excerpt(raw)


def test_salvage_of_a_big_snapshot_keeps_every_good_entity() -> None:
    """A 2 MB snapshot of 30,000 orders with one deep entity: the 30,000 come through, the deep one is marked."""
    entity = orjson.dumps({"id": 0, "accountId": 1, "ordStatus": "Working", "text": "some words, [and] more"})
    entities = [entity.replace(b'"id":0', b'"id":%d' % i) for i in range(30_000)]
    entities.insert(15_000, b'{"id":99,"text":' + DEEP + b"}")
    raw = b'a[{"s":200,"i":1,"d":{"orders":[' + b",".join(entities) + b"]}}]"
    assert len(raw) > 2_000_000
    (item,) = salvage.messages(raw)
    orders = item["d"]["orders"]
    assert len(orders) == 30_001 and isinstance(orders[15_000], Unreadable)
    assert [o["id"] for o in orders if not isinstance(o, Unreadable)] == list(range(30_000))
