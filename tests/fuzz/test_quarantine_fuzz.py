"""Property tests for quarantine: whatever a frame holds, the codec raises only ProtocolError, and everything it
lets through (entities, system payloads, rejected records) a sink can store."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from shardsync import protocol as p
from shardsync import syncmessage
from shardsync.mirror import Mirror
from shardsync.quarantine import LINKS, MAX_DEPTH, Refusal, fits

#: Ids around every edge: int64 bounds, u64 (orjson's last integer), beyond (a float), and bad types.
EDGES = [0, 1, -1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, "7", True, None, 1.5]
ident_text = st.sampled_from([str(v).encode() if type(v) is int else orjson.dumps(v) for v in EDGES])
#: Nesting around every limit that matters: what sinks write (253), orjson writes (254), orjson reads (1024).
depths = st.sampled_from([0, 1, 200, MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 1000, 1019, 1025, 3000])


@st.composite
def entity_text(draw: st.DrawFn) -> bytes:
    """An order's JSON text, by hand: any id, accountId and orderId edge, a field nested to any depth."""
    depth = draw(depths)
    nested = b"[" * depth + b"]" * depth if depth else b'"flat"'
    parts = [b'"id":' + draw(ident_text)]
    if draw(st.booleans()):
        parts.append(b'"accountId":' + draw(ident_text))
    if draw(st.booleans()):
        parts.append(b'"orderId":' + draw(ident_text))
    parts.append(b'"text":' + nested)
    if draw(st.booleans()):
        parts.append(b'"bad":"\xff"')  # invalid UTF-8: orjson refuses the whole frame
    text = b"{" + b",".join(draw(st.permutations(parts))) + b"}"
    return draw(st.sampled_from([text, text, text, b"17", b"null", b"[" + text + b"]"]))


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    items = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["props", "list", "snapshot", "system"]))
        if kind == "props":
            items.append(b'{"e":"props","d":{"entityType":"fill","eventType":"Updated","entity":'
                         + draw(entity_text()) + b"}}")
        elif kind == "list":
            many = b",".join(draw(st.lists(entity_text(), min_size=1, max_size=3)))
            items.append(b'{"e":"props","d":{"entityType":"order","eventType":"Created","entity":[' + many + b"]}}")
        elif kind == "snapshot":
            many = b",".join(draw(st.lists(entity_text(), max_size=4)))
            items.append(b'{"s":200,"i":1,"d":{"orders":[' + many + b'],"done":false}}')
        else:
            depth = draw(depths)
            items.append(b'{"e":"alert","d":{"x":' + b"[" * depth + b"]" * depth + b"}}")
    raw = b"a[" + b",".join(items) + b"]"
    # Sometimes break the frame itself: it must still end as a ProtocolError, nothing else.
    cut = draw(st.sampled_from([None, None, None, len(raw) // 2, len(raw) - 1]))
    return raw if cut is None else raw[:cut]


def storable(entity_type: str, entity: Any) -> None:
    """What a sink does with an entity: its ids in int64 (the link only where the type is attributed through
    it: a fill's orderId), its JSON inside a wrapping object (a jsonl line)."""
    assert type(entity) is dict and fits(entity["id"])
    for field in ("accountId", LINKS.get(entity_type)):
        value = entity.get(field) if field else None
        assert type(value) is not int or fits(value)
    orjson.dumps({"entity": entity})


def stored_record(refusal: Refusal) -> None:
    change = Mirror().rejected(refusal, received_at="T")
    assert change.id is None or fits(change.id)
    assert change.account_id is None or fits(change.account_id)
    orjson.dumps({"entity": change.entity})


@settings(max_examples=400, deadline=None)
@given(frames())
def test_any_frame_gives_storable_messages_or_a_protocol_error(raw: bytes) -> None:
    """Frames mixing good, deep, unreadable and out-of-range entities, whole or cut: only ProtocolError is raised,
    every entity let through is storable, and every refusal's rejected record is storable."""
    with contextlib.suppress(p.ProtocolError):
        frame = p.decode_frame(raw)
        assert isinstance(frame, p.MessagesFrame)
        for message in frame.messages:
            if isinstance(message, p.PropsEvent):
                for entity in message.entities:
                    storable(message.entity_type, entity)
            elif isinstance(message, p.Rejected):
                for refusal in message.refused:
                    stored_record(refusal)
            elif isinstance(message, p.SystemEvent):
                orjson.dumps({"entity": message.data})
            elif isinstance(message, p.Response):
                refused: list[Refusal] = []
                for entity_type, entity in syncmessage.snapshot_entities(message.data, refused, message.nesting):
                    storable(entity_type, entity)
                for refusal in refused:
                    stored_record(refusal)
