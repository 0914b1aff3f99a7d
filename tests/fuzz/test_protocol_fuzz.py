"""Property tests for the codec: round trips and no crash on arbitrary input."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from shardsync import protocol as p
from shardsync import syncmessage
from shardsync.change import EVENT_TYPES

ids = st.integers(min_value=-(2**63), max_value=2**63 - 1)
scalars = st.none() | st.booleans() | ids | st.text(max_size=20) | st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
entities = st.fixed_dictionaries({"id": ids}, optional={"accountId": ids, "name": st.text(max_size=10)})


@st.composite
def props_messages(draw: st.DrawFn) -> tuple[dict[str, Any], p.PropsEvent]:
    entity_type = draw(st.sampled_from(["order", "fill", "position", "cashBalance", "account"]))
    event_type = draw(st.sampled_from(sorted(EVENT_TYPES)))
    many = draw(st.lists(entities, min_size=1, max_size=4))
    as_list = draw(st.booleans()) or len(many) > 1
    entity: Any = many if as_list else many[0]
    wire = {"e": "props", "d": {"entityType": entity_type, "eventType": event_type, "entity": entity}}
    return wire, p.PropsEvent(entity_type, event_type, tuple(many))


@st.composite
def responses(draw: st.DrawFn) -> tuple[dict[str, Any], p.Response]:
    status = draw(st.sampled_from([200, 400, 401, 404, 429, 500]))
    rid = draw(st.integers(min_value=0, max_value=2**31))
    if status == 200:
        data = draw(st.none() | st.dictionaries(st.sampled_from(["users", "accounts"]), st.lists(entities, max_size=3)))
    else:
        data = draw(st.text(max_size=30))
    wire: dict[str, Any] = {"s": status, "i": rid}
    if data is not None:
        wire["d"] = data
    expected = p.Response(status, rid, p._unquote(data) if isinstance(data, str) else data)
    return wire, expected


@settings(max_examples=300, deadline=None)
@given(st.lists(props_messages() | responses(), min_size=1, max_size=6))
def test_messages_round_trip(pairs: list[tuple[dict[str, Any], p.Message]]) -> None:
    """Any batch of well-formed responses and props encoded on the wire decodes back to the same messages."""
    raw = b"a" + orjson.dumps([wire for wire, _ in pairs])
    frame = p.decode_frame(raw)
    assert isinstance(frame, p.MessagesFrame)
    assert frame.messages == tuple(expected for _, expected in pairs)


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=30),
    st.integers(min_value=0, max_value=2**31),
    json_values.filter(lambda v: not isinstance(v, str)),
)
def test_request_round_trip(query: str, rid: int, body: Any) -> None:
    """An encoded request splits back into endpoint, id, query and the same JSON body (text bodies go raw)."""
    text = p.encode_request("user/syncrequest", rid, query, body)
    endpoint, rid_text, query_text, body_text = text.split("\n", 3)
    assert (endpoint, int(rid_text), query_text) == ("user/syncrequest", rid, query)
    assert (orjson.loads(body_text) if body_text else None) == body


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_protocol_error(raw: bytes) -> None:
    """Arbitrary bytes either decode or raise ProtocolError, never anything else."""
    with contextlib.suppress(p.ProtocolError):
        p.decode_frame(raw)


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_arbitrary_json_arrays_raise_only_protocol_error(value: Any) -> None:
    """Any JSON value inside `a`, `c` or a snapshot either decodes or raises ProtocolError."""
    body = orjson.dumps(value)
    for raw in (b"a" + body, b"a[" + body + b"]", b"c" + body):
        with contextlib.suppress(p.ProtocolError):
            p.decode_frame(raw)
    try:
        list(syncmessage.snapshot_entities(value, []))
        syncmessage.is_snapshot_end(value)
    except p.ProtocolError:
        pass
