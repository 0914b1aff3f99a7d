"""Unit tests for the pure Tradovate codec."""

from __future__ import annotations

import pytest

from shardsync import protocol as p
from shardsync import syncmessage
from shardsync.quarantine import Refusal


def test_open_and_heartbeat_frames() -> None:
    """`o` and `h` decode to their own frame types, from bytes or text."""
    assert p.decode_frame(b"o") == p.OpenFrame()
    assert p.decode_frame("h") == p.HeartbeatFrame()


def test_bare_close_and_close_with_code() -> None:
    """Both `c` and `c[code,"reason"]` decode, keeping code and reason."""
    assert p.decode_frame(b"c") == p.CloseFrame()
    assert p.decode_frame(b'c[3000,"Go away!"]') == p.CloseFrame(3000, "Go away!")
    assert p.decode_frame(b"c[1000]") == p.CloseFrame(1000, None)


def test_mixed_frame_keeps_order_of_responses_and_events() -> None:
    """One `a[...]` frame may carry responses and events mixed; all come out in order."""
    frame = p.decode_frame(
        b'a[{"s":200,"i":1,"d":{"users":[]}},'
        b'{"e":"props","d":{"entityType":"position","eventType":"Updated","entity":{"id":5,"accountId":7}}},'
        b'{"e":"shutdown","d":{"reasonCode":"Maintenance","reason":"bye"}}]'
    )
    assert isinstance(frame, p.MessagesFrame)
    resp, props, shutdown = frame.messages
    assert resp == p.Response(200, 1, {"users": []})
    assert props == p.PropsEvent("position", "Updated", ({"id": 5, "accountId": 7},))
    assert shutdown == p.ShutdownEvent("Maintenance", "bye")
    assert not shutdown.quota


def test_props_entity_list_is_flattened_into_entities() -> None:
    """A props event whose `entity` is a list yields every entity."""
    frame = p.decode_frame(
        b'a[{"e":"props","d":{"entityType":"fill","eventType":"Created","entity":[{"id":1},{"id":2}]}}]'
    )
    assert isinstance(frame, p.MessagesFrame)
    event = frame.messages[0]
    assert isinstance(event, p.PropsEvent)
    assert [e["id"] for e in event.entities] == [1, 2]


def test_error_response_text_plain_and_json_quoted() -> None:
    """Error `d` is text, sometimes JSON-quoted a second time; both give the plain text."""
    frame = p.decode_frame(b'a[{"s":404,"i":3,"d":"Not found: x"},{"s":401,"i":4,"d":"\\"Invalid access token\\""}]')
    assert isinstance(frame, p.MessagesFrame)
    first, second = frame.messages
    assert isinstance(first, p.Response) and isinstance(second, p.Response)
    assert first.error_text == "Not found: x" and not first.ok
    assert second.error_text == "Invalid access token"


def test_success_without_data_and_missing_id() -> None:
    """`{"s":200,"i":0}` is a success without data; a 429 without `i` still decodes."""
    frame = p.decode_frame(b'a[{"s":200,"i":0},{"s":429}]')
    assert isinstance(frame, p.MessagesFrame)
    ok, limited = frame.messages
    assert isinstance(ok, p.Response) and ok.ok and ok.data is None
    assert isinstance(limited, p.Response) and limited.id is None and limited.status == 429


def test_penalty_is_recognised_and_not_ok() -> None:
    """A 200 carrying p-ticket/p-time is a penalty, not a success."""
    frame = p.decode_frame(b'a[{"s":200,"i":7,"d":{"p-ticket":"Xy9","p-time":15,"p-captcha":true}}]')
    assert isinstance(frame, p.MessagesFrame)
    resp = frame.messages[0]
    assert isinstance(resp, p.Response)
    assert resp.penalty == p.Penalty("Xy9", 15.0, True)
    assert not resp.ok


def test_shutdown_quota_reasons_and_missing_payload() -> None:
    """Quota shutdowns are flagged; a shutdown without payload still decodes."""
    frame = p.decode_frame(b'a[{"e":"shutdown","d":{"reasonCode":"ConnectionQuotaReached"}},{"e":"shutdown"}]')
    assert isinstance(frame, p.MessagesFrame)
    quota, bare = frame.messages
    assert isinstance(quota, p.ShutdownEvent) and quota.quota
    assert bare == p.ShutdownEvent(None, None)


def test_unknown_and_system_events_are_kept() -> None:
    """Event kinds the codec does not know come out as SystemEvent with their payload."""
    frame = p.decode_frame(b'a[{"e":"OtherEnvAdminAlertSignal","d":{"x":1}},{"e":"clock","d":"{\\"t\\":1}"}]')
    assert isinstance(frame, p.MessagesFrame)
    assert frame.messages == (
        p.SystemEvent("OtherEnvAdminAlertSignal", {"x": 1}),
        p.SystemEvent("clock", '{"t":1}'),
    )


def test_string_messages_holding_objects_are_accepted() -> None:
    """A message sent as a JSON string holding an object decodes like the object."""
    frame = p.decode_frame(b'a["{\\"s\\":200,\\"i\\":2}"]')
    assert isinstance(frame, p.MessagesFrame)
    assert frame.messages == (p.Response(200, 2, None),)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"x",
        b"oo",
        b"a",
        b'a[{"s":',
        b"a{}",
        b"a[1]",
        b'a[{"x":1}]',
        b'a[{"s":"200","i":1}]',
        b'a[{"s":200,"i":true}]',
        b'a[{"e":1}]',
        b'a[{"e":"props","d":{"eventType":"Created","entity":{"id":1}}}]',
        b'a[{"e":"props","d":[]}]',
        b'a[{"s":200,"i":1,"d":{"p-ticket":5}}]',
        b"a[\xff\xfe]",
        b'c[1000,"a","b"]',
        b'c["x"]',
        b"c{",
        b'a["not an object"]',
    ],
)
def test_malformed_frames_raise_protocol_error_with_excerpt(raw: bytes) -> None:
    """Every malformed frame raises ProtocolError carrying an excerpt, never another error."""
    with pytest.raises(p.ProtocolError) as info:
        p.decode_frame(raw)
    assert info.value.excerpt == p.excerpt(raw)


def test_excerpt_is_bounded() -> None:
    """A huge malformed frame yields a short excerpt, not the whole payload."""
    raw = b"a[" + b"x" * 10_000_000
    with pytest.raises(p.ProtocolError) as info:
        p.decode_frame(raw)
    assert len(str(info.value)) < 300


def test_encode_request_and_authorize() -> None:
    """Requests are endpoint/id/query/body lines; authorize carries the raw token."""
    assert p.encode_request("executionReport/list", 4) == "executionReport/list\n4\n\n"
    assert p.encode_request("position/deps", 5, "masterid=70011") == "position/deps\n5\nmasterid=70011\n"
    assert p.encode_request("user/syncrequest", 1, body={"users": [9]}) == 'user/syncrequest\n1\n\n{"users":[9]}'
    assert p.encode_authorize(0, "tok") == "authorize\n0\n\ntok"
    with pytest.raises(ValueError):
        p.encode_request("/user/syncrequest", 1)
    with pytest.raises(ValueError):
        p.encode_authorize(0, "a\nb")


def test_sync_request_body_sharded() -> None:
    """The sharded body carries splitResponses, the expression and explicit entityTypes."""
    body = p.sync_request_body(divisor=16, remainder=3, entity_types=["order", "fill"])
    assert body == {
        "splitResponses": True,
        "entityTypes": ["order", "fill"],
        "shardingExpression": {"expressionType": "modAccountId", "divisor": 16, "remainder": 3},
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"divisor": 4, "remainder": 1, "users": [1]},
        {"divisor": 4, "remainder": 1, "accounts": [1]},
        {"divisor": 4, "remainder": 4},
        {"divisor": 0, "remainder": 0},
        {"divisor": 4},
        {"users": [1], "entity_types": ["order"]},
        {"divisor": 2, "remainder": 0, "expression": "modFoo"},
    ],
)
def test_sync_request_body_refuses_forbidden_combinations(kwargs: dict[str, object]) -> None:
    """users/accounts with sharding, users with entityTypes and bad sharding are refused."""
    with pytest.raises(ValueError):
        p.sync_request_body(**kwargs)  # type: ignore[arg-type]


def test_singular_names() -> None:
    """Plural collections map to entity types, known and unknown (ies/ses/s rules)."""
    assert syncmessage.singular("accountRiskStatuses") == "accountRiskStatus"
    assert syncmessage.singular("currencies") == "currency"
    assert syncmessage.singular("fillPairs") == "fillPair"
    assert syncmessage.singular("adminAlertSignals") == "adminAlertSignal"
    assert syncmessage.singular("userAccountPositionLimitStatuses") == "userAccountPositionLimitStatus"
    assert syncmessage.singular("tradingPolicies") == "tradingPolicy"


def test_snapshot_entities_skips_null_and_flags() -> None:
    """Null collections and scalar flags contribute no entities; lists do; a body that is no object is an error."""
    data = {"users": [{"id": 1}], "accounts": None, "positions": [{"id": 2}, {"id": 3}], "done": True}
    expected = [("user", {"id": 1}), ("position", {"id": 2}), ("position", {"id": 3})]
    refused: list[Refusal] = []
    assert list(syncmessage.snapshot_entities(data, refused)) == expected
    assert refused == []
    with pytest.raises(p.ProtocolError):
        list(syncmessage.snapshot_entities([1], refused))


def test_snapshot_end_markers() -> None:
    """Empty bodies and flag-only bodies end a split snapshot; chunks with collections do not."""
    assert syncmessage.is_snapshot_end({})
    assert syncmessage.is_snapshot_end(None)
    assert syncmessage.is_snapshot_end({"done": True})
    assert not syncmessage.is_snapshot_end({"done": True, "users": []})
    assert not syncmessage.is_snapshot_end({"users": [{"id": 1}]})
    assert not syncmessage.is_snapshot_end({"done": False})


@pytest.mark.parametrize(
    ("entity", "reason"),
    [
        (b'{"name":"x"}', "id is not an integer"),
        (b'{"id":"1"}', "id is not an integer"),
        (b'{"id":null}', "id is not an integer"),
        (b'{"id":true}', "id is not an integer"),
        (b'{"id":1.0}', "id is not an integer"),
        (b'"x"', "not an object"),
        (b"9223372036854775808", "not an object"),
        (b'{"id":9223372036854775808}', "id outside signed 64-bit"),
        (b'{"id":-9223372036854775809}', "id is not an integer"),  # orjson gives a float below -2**63
        (b'{"id":1,"accountId":9223372036854775808}', "accountId outside signed 64-bit"),
    ],
)
def test_props_entity_ids_are_checked_by_the_codec(entity: bytes, reason: str) -> None:
    """The codec owns the entity-id check: a props entity without a storable integer (non-bool) id is refused,
    as a Rejected message with the reason, never a ProtocolError for the frame."""
    raw = b'a[{"e":"props","d":{"entityType":"order","eventType":"Created","entity":' + entity + b"}}]"
    frame = p.decode_frame(raw)
    assert isinstance(frame, p.MessagesFrame)
    (rejected,) = frame.messages
    assert isinstance(rejected, p.Rejected)
    assert [(r.entity_type, r.event_type, r.reason) for r in rejected.refused] == [("order", "Created", reason)]


def test_props_keep_their_good_entities_beside_the_refused_ones() -> None:
    """A list entity with one bad member: the good ones stay one PropsEvent, the bad one follows as Rejected."""
    raw = (b'a[{"e":"props","d":{"entityType":"fill","eventType":"Created","entity":'
           b'[{"id":1,"orderId":5},{"id":false},{"id":3,"orderId":9223372036854775808},{"id":4}]}}]')
    frame = p.decode_frame(raw)
    assert isinstance(frame, p.MessagesFrame)
    props, rejected = frame.messages
    assert props == p.PropsEvent("fill", "Created", ({"id": 1, "orderId": 5}, {"id": 4}))
    assert isinstance(rejected, p.Rejected)
    assert [r.reason for r in rejected.refused] == ["id is not an integer", "orderId outside signed 64-bit"]
    assert [r.id for r in rejected.refused] == [None, 3]


@pytest.mark.parametrize("entry", [{"id": True}, {"id": "1"}, {"id": 1.5}, {"id": None}, "x", 7, {"id": 2**63}])
def test_snapshot_entity_ids_are_checked_by_the_codec(entry: object) -> None:
    """The codec owns the entity-id check for snapshots too: an entry without a storable integer id is refused
    (handed back with the reason) and the rest of the snapshot comes through."""
    refused: list[Refusal] = []
    data = {"users": [{"id": 1}], "positions": [{"id": 2}, entry, {"id": 4}]}
    got = list(syncmessage.snapshot_entities(data, refused))
    assert got == [("user", {"id": 1}), ("position", {"id": 2}), ("position", {"id": 4})]
    assert [(r.entity_type, r.event_type) for r in refused] == [("position", "Snapshot")]


def test_error_text_of_a_deep_error_body_is_bounded() -> None:
    """An error response whose body nests 1000 deep (orjson reads it, cannot write it) still has a short error_text."""
    raw = b'a[{"s":500,"i":0,"d":{"why":' + b"[" * 1000 + b"]" * 1000 + b"}}]"
    frame = p.decode_frame(raw)
    assert isinstance(frame, p.MessagesFrame)
    (response,) = frame.messages
    assert isinstance(response, p.Response)
    assert response.error_text.startswith('{"why":[[[[') and len(response.error_text) <= 401


def test_a_deep_snapshot_entity_is_found_through_the_frames_bracket_count() -> None:
    """A 300-deep order in a snapshot frame: the response carries the frame's count and the order is refused;
    a count that leaves no room for a deep entity skips the walk (the gate the hot path relies on)."""
    deep = b"[" * 300 + b"]" * 300
    raw = b'a[{"s":200,"i":1,"d":{"orders":[{"id":1},{"id":2,"t":' + deep + b"}]}}]"
    frame = p.decode_frame(raw)
    assert isinstance(frame, p.MessagesFrame)
    (response,) = frame.messages
    assert isinstance(response, p.Response) and response.nesting == 306
    refused: list[Refusal] = []
    assert [e["id"] for _, e in syncmessage.snapshot_entities(response.data, refused, response.nesting)] == [1]
    assert [(r.id, r.reason) for r in refused] == [(2, "nested deeper than 253 levels")]
    # 4 containers (d, orders, two orders) + 252 inside an entity cannot hide 253 levels: not walked.
    walked: list[Refusal] = []
    assert len(list(syncmessage.snapshot_entities(response.data, walked, 4 + 252))) == 2 and walked == []


def test_a_deep_props_entity_in_a_long_frame_is_refused() -> None:
    """Entities orjson reads but cannot write (255 and 1000 deep) are refused; a flat neighbour in the same
    frame, and a system event, go on; a deep system payload is refused whole."""
    def props(ident: int, depth: int) -> bytes:
        text = b"[" * depth + b"]" * depth if depth else b"0"
        return (b'{"e":"props","d":{"entityType":"order","eventType":"Updated","entity":{"id":%d,"t":' % ident
                + text + b"}}}")
    raw = (b"a[" + props(1, 0) + b"," + props(2, 255) + b"," + props(3, 1000) + b',{"e":"x","d":1},'
           + b'{"e":"y","d":' + b"[" * 300 + b"]" * 300 + b"}]")
    frame = p.decode_frame(raw)
    assert isinstance(frame, p.MessagesFrame)
    kinds = [type(m).__name__ for m in frame.messages]
    assert kinds == ["PropsEvent", "Rejected", "Rejected", "SystemEvent", "Rejected"]
    refused = [r for m in frame.messages if isinstance(m, p.Rejected) for r in m.refused]
    assert [(r.entity_type, r.id, r.reason) for r in refused] == [
        ("order", 2, "nested deeper than 253 levels"), ("order", 3, "nested deeper than 253 levels"),
        ("y", None, "nested deeper than 253 levels")]
