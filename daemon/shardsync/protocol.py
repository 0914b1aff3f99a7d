"""Pure Tradovate WebSocket codec: server frames in, typed messages out; requests out.

No I/O happens here.  Everything malformed raises :class:`ProtocolError` (and
nothing else), carrying a short excerpt of the offending input, so the session
loop has exactly one exception to turn into "log, resync".

Entities are validated here and only here (snapshot collections: in
``syncmessage``), by the rules of ``quarantine``: every entity of a
:class:`PropsEvent` is an object with a storable integer ``id`` (and
``accountId`` and parent link) nested at most ``MAX_DEPTH`` deep; the worker
and the mirror's ``diff_props`` trust it.  An entity that breaks a rule is
not a protocol error: it comes out in a :class:`Rejected` message beside the
rest, and so does a system event whose payload no sink could store.  A frame
orjson refuses (nesting beyond its 1024 levels, bad UTF-8 in one entity) is
split into the parts it accepts by ``salvage``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from shardsync import quarantine, salvage
from shardsync.quarantine import LINKS, MAX_DEPTH, Refusal, Unreadable, problem, refuse, render, too_deep
from shardsync.requests import EXPRESSION_TYPES, encode_authorize, encode_request, sync_request_body

# Requests are encoded in their own module (requests.py); they stay importable from here.
__all__ = [
    "EXPRESSION_TYPES", "HEARTBEAT", "HEARTBEAT_INTERVAL", "SHUTDOWN_QUOTA_REASONS", "CloseFrame", "Frame",
    "HeartbeatFrame", "Message", "MessagesFrame", "OpenFrame", "Penalty", "PropsEvent", "ProtocolError", "Rejected",
    "Response", "ShutdownEvent", "SystemEvent", "decode_frame", "encode_authorize", "encode_request", "excerpt",
    "is_int", "penalty_of", "sync_request_body"
]

#: The client heartbeat, sent every 2.5 s whatever the traffic.
HEARTBEAT: Final = "[]"
HEARTBEAT_INTERVAL: Final = 2.5

SHUTDOWN_QUOTA_REASONS: Final = frozenset({"ConnectionQuotaReached", "IPQuotaReached"})

_EXCERPT = 120


class ProtocolError(ValueError):
    """A frame or message that does not follow the protocol."""

    def __init__(self, message: str, data: bytes | str | None = None) -> None:
        self.excerpt = excerpt(data) if data is not None else ""
        super().__init__(f"{message}: {self.excerpt!r}" if data is not None else message)


def excerpt(data: bytes | str, limit: int = _EXCERPT) -> str:
    """A short, printable prefix of ``data`` for error messages and logs."""
    if isinstance(data, bytes):
        text = data[:limit].decode("utf-8", "backslashreplace")
    else:
        text = data[:limit]
    return text + ("..." if len(data) > limit else "")


# --- frames --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenFrame:
    """``o``: the server is ready for ``authorize``."""


@dataclass(frozen=True, slots=True)
class HeartbeatFrame:
    """``h``: server heartbeat (only sent while otherwise idle)."""


@dataclass(frozen=True, slots=True)
class CloseFrame:
    """``c`` or ``c[code,"reason"]``: the server is closing the session."""

    code: int | None = None
    reason: str | None = None


@dataclass(slots=True)  # not frozen: made per frame, and frozen costs ~1 us more each
class MessagesFrame:
    """``a[...]``: one or more responses and events, in order."""

    messages: tuple[Message, ...]


Frame = OpenFrame | HeartbeatFrame | CloseFrame | MessagesFrame

# --- messages ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Penalty:
    """A time penalty (``p-ticket``) carried in an otherwise successful response."""

    ticket: str
    time: float
    captcha: bool


@dataclass(slots=True)  # not frozen: made per frame, and frozen costs ~1 us more each
class Response:
    """A reply to request ``id``; ``data`` is the error text for non-2xx statuses."""

    status: int
    id: int | None
    data: Any = None
    #: At least the number of objects and arrays in ``data`` (its frame's count); None: unknown.
    nesting: int | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and self.penalty is None

    @property
    def error_text(self) -> str:
        if isinstance(self.data, str):
            return self.data
        # Bounded whatever the data: it may nest beyond what orjson writes.
        return "" if self.data is None else render(self.data, 400)

    @property
    def penalty(self) -> Penalty | None:
        return penalty_of(self.data)


@dataclass(slots=True)  # not frozen: made per frame, and frozen costs ~1 us more each
class PropsEvent:
    """An entity change; ``entities`` holds one or more objects (``entity`` may be a list), each with an int ``id``."""

    entity_type: str
    event_type: str
    entities: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class ShutdownEvent:
    """The server announces it will close the socket (maintenance, quota)."""

    reason_code: str | None
    reason: str | None

    @property
    def quota(self) -> bool:
        return self.reason_code in SHUTDOWN_QUOTA_REASONS


@dataclass(frozen=True, slots=True)
class SystemEvent:
    """Any other event kind (admin alert signals, unknown kinds): kept, never dropped."""

    name: str
    data: Any = field(default=None)


@dataclass(frozen=True, slots=True)
class Rejected(SystemEvent):
    """Entities the codec refused (quarantine), or a whole event no sink could store, with the reasons.

    A SystemEvent on purpose: whatever keeps system events in order (the
    snapshot's buffer, the session's dispatch) keeps these too, and the batch
    writes them to the change log with origin ``rejected``.
    """

    name: str = "rejected"
    refused: tuple[Refusal, ...] = ()


Message = Response | PropsEvent | ShutdownEvent | SystemEvent


def penalty_of(data: Any) -> Penalty | None:
    """The time penalty inside a response body, if there is one."""
    if not isinstance(data, dict) or "p-ticket" not in data:
        return None
    ticket = data["p-ticket"]
    raw_time = data.get("p-time", 0)
    if not isinstance(ticket, str) or isinstance(raw_time, bool) or not isinstance(raw_time, int | float):
        raise ProtocolError("malformed time penalty", render(data))
    return Penalty(ticket=ticket, time=float(raw_time), captcha=data.get("p-captcha") is True)


# --- decoding -----------------------------------------------------------------


def decode_frame(data: bytes | str) -> Frame:
    """Decode one server text frame; raises :class:`ProtocolError` on anything malformed."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if not raw:
        raise ProtocolError("empty frame", raw)
    kind = raw[:1]
    if kind == b"a":
        return MessagesFrame(_decode_messages(raw))
    if raw == b"o":
        return OpenFrame()
    if raw == b"h":
        return HeartbeatFrame()
    if kind == b"c":
        return _decode_close(raw)
    raise ProtocolError("unknown frame type", raw)


def _loads(raw: bytes, what: str, origin: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"invalid JSON in {what} ({exc.msg})", origin) from None


def _decode_close(raw: bytes) -> CloseFrame:
    if raw == b"c":
        return CloseFrame()
    body = _loads(raw[1:], "close frame", raw)
    if not isinstance(body, list) or not body or len(body) > 2:
        raise ProtocolError("close frame is not [code, reason]", raw)
    code = body[0]
    reason = body[1] if len(body) == 2 else None
    if not is_int(code) or not (reason is None or isinstance(reason, str)):
        raise ProtocolError("close frame is not [code, reason]", raw)
    return CloseFrame(code=code, reason=reason)


#: An entity nested more than MAX_DEPTH deep needs this many bytes at least (its brackets):
#: a shorter frame is never searched for one.
_DEEP_FRAME: Final = 2 * (MAX_DEPTH + 1)


def _decode_messages(raw: bytes) -> tuple[Message, ...]:
    try:
        body = orjson.loads(raw[1:])
    except orjson.JSONDecodeError as exc:
        body = _salvaged(raw, exc)
    if type(body) is not list:
        raise ProtocolError("message frame is not a JSON array", raw)
    # Props events, the live stream, go straight to their decoder: at tens of
    # thousands of events per second the dispatch through _decode_message and
    # _decode_event costs about as much as the JSON parsing itself.
    messages: list[Message] = []
    for item in body:
        if type(item) is dict and item.get("e") == "props":
            _decode_props(item.get("d"), raw, messages)
        else:
            _decode_message(item, raw, messages)
    if len(raw) >= _DEEP_FRAME:
        _check_nesting(raw, messages)
    return tuple(messages)


def _salvaged(raw: bytes, exc: orjson.JSONDecodeError) -> list[Any]:
    """The frame split into what orjson accepts (salvage.py), or the ProtocolError it always was."""
    try:
        return salvage.messages(raw)
    except salvage.Unscannable:
        raise ProtocolError(f"invalid JSON in message frame ({exc.msg})", raw) from None


def _check_nesting(raw: bytes, messages: list[Message]) -> None:
    """Refuse the entities and system payloads of a long frame nested deeper than a sink can write.

    Cheap first: every object or array has a ``{`` or ``[`` in the frame, and
    the messages' own containers (items, payloads, entities) are counted from
    what was decoded.  Only when the rest could hold MAX_DEPTH levels inside
    one entity are the entities walked (quarantine.too_deep).  A response
    learns the count (``Response.nesting``) for syncmessage's same check.
    """
    containers = raw.count(b"{") + raw.count(b"[")
    structural = 1  # the frame's array
    for message in messages:
        kind = type(message)
        if kind is PropsEvent:
            structural += 2 + len(message.entities)  # type: ignore[union-attr]
        else:
            structural += 1
            if kind is Response:
                message.nesting = containers  # type: ignore[union-attr]
    if containers - structural < MAX_DEPTH:
        return
    checked: list[Message] = []
    for message in messages:
        if type(message) is PropsEvent:
            checked += _deep_props(message)
        elif type(message) is SystemEvent and too_deep(message.data):
            checked.append(Rejected(refused=(refuse(message.name, "Event", message.data, quarantine.TOO_DEEP),)))
        else:
            checked.append(message)
    messages[:] = checked


def _deep_props(event: PropsEvent) -> list[Message]:
    deep = [too_deep(entity) for entity in event.entities]
    if not any(deep):
        return [event]
    out: list[Message] = []
    good = tuple(entity for entity, bad in zip(event.entities, deep, strict=True) if not bad)
    if good:
        out.append(PropsEvent(event.entity_type, event.event_type, good))
    refused = tuple(refuse(event.entity_type, event.event_type, entity, quarantine.TOO_DEEP)
                    for entity, bad in zip(event.entities, deep, strict=True) if bad)
    out.append(Rejected(refused=refused))
    return out


def _decode_message(item: Any, origin: bytes, out: list[Message]) -> None:
    if isinstance(item, str):
        # Some servers are reported to send messages as JSON strings inside the
        # array; accept them when they hold an object.
        item = _loads(item.encode("utf-8", "surrogatepass"), "string message", origin)
    if not isinstance(item, dict):
        raise ProtocolError("message is not a JSON object", origin)
    if "e" in item:
        _decode_event(item, origin, out)
    elif "s" in item:
        out.append(_decode_response(item, origin))
    else:
        raise ProtocolError("message is neither a response nor an event", origin)


def _decode_response(item: dict[str, Any], origin: bytes) -> Response:
    status, rid = item["s"], item.get("i")
    if not is_int(status) or not (rid is None or is_int(rid)):
        raise ProtocolError("response status or id is not an integer", origin)
    data = item.get("d")
    if not 200 <= status < 300 and isinstance(data, str):
        data = _unquote(data)
    try:
        penalty_of(data)
    except ProtocolError as exc:
        raise ProtocolError(str(exc).split(":")[0], origin) from None
    # Every object or array takes two bytes of the frame: a bound until _check_nesting counts them.
    return Response(status=status, id=rid, data=data, nesting=len(origin) // 2)


def _unquote(text: str) -> str:
    """Error text is sometimes JSON-quoted a second time (``"\\"Not found\\""``)."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            inner = orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
        if isinstance(inner, str):
            return inner
    return text


def _decode_event(item: dict[str, Any], origin: bytes, out: list[Message]) -> None:
    name, data = item["e"], item.get("d")
    if not isinstance(name, str):
        raise ProtocolError("event name is not a string", origin)
    if name == "props":
        _decode_props(data, origin, out)
    elif name == "shutdown":
        if not isinstance(data, dict):
            data = {}
        code, reason = data.get("reasonCode"), data.get("reason")
        out.append(ShutdownEvent(
            reason_code=code if isinstance(code, str) else None,
            reason=reason if isinstance(reason, str) else None,
        ))
    elif isinstance(data, Unreadable):
        out.append(Rejected(refused=(refuse(name, "Event", data, data.reason),)))
    else:
        out.append(SystemEvent(name=name, data=data))


def _decode_props(data: Any, origin: bytes, out: list[Message]) -> None:
    """Append the props event (its storable entities) and, if any entity was refused, a Rejected."""
    if not isinstance(data, dict):
        raise ProtocolError("props event without an object payload", origin)
    entity_type, event_type, entity = data.get("entityType"), data.get("eventType"), data.get("entity")
    if not isinstance(entity_type, str) or not entity_type:
        raise ProtocolError("props event without entityType", origin)
    if not isinstance(event_type, str):
        raise ProtocolError("props event without eventType", origin)
    entities = tuple(entity) if type(entity) is list else (entity,)
    link = LINKS.get(entity_type)
    for one in entities:
        if problem(one, link) is not None:
            break
    else:
        out.append(PropsEvent(entity_type=entity_type, event_type=event_type, entities=entities))
        return
    reasons = [problem(one, link) for one in entities]
    good = tuple(one for one, reason in zip(entities, reasons, strict=True) if reason is None)
    if good:
        out.append(PropsEvent(entity_type=entity_type, event_type=event_type, entities=good))
    out.append(Rejected(refused=tuple(refuse(entity_type, event_type, one, reason)
                                      for one, reason in zip(entities, reasons, strict=True) if reason is not None)))


def is_int(value: Any) -> bool:
    """An int that is not a bool (JSON true would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)
