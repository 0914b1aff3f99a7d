"""Pure Tradovate WebSocket codec: server frames in, typed messages out; requests out.

No I/O happens here.  Everything malformed raises :class:`ProtocolError` (and
nothing else), carrying a short excerpt of the offending input, so the session
loop has exactly one exception to turn into "log, resync".

Entity ids are checked here and only here: every entity of a
:class:`PropsEvent` and of :func:`snapshot_entities` is an object with an
integer (not bool) ``id``; the worker and the mirror's ``diff_props`` trust it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

#: The client heartbeat, sent every 2.5 s whatever the traffic.
HEARTBEAT: Final = "[]"
HEARTBEAT_INTERVAL: Final = 2.5

EXPRESSION_TYPES: Final = frozenset({"modAccountId", "modUserId"})
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

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and self.penalty is None

    @property
    def error_text(self) -> str:
        if isinstance(self.data, str):
            return self.data
        return "" if self.data is None else orjson.dumps(self.data).decode()

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


Message = Response | PropsEvent | ShutdownEvent | SystemEvent


def penalty_of(data: Any) -> Penalty | None:
    """The time penalty inside a response body, if there is one."""
    if not isinstance(data, dict) or "p-ticket" not in data:
        return None
    ticket = data["p-ticket"]
    raw_time = data.get("p-time", 0)
    if not isinstance(ticket, str) or isinstance(raw_time, bool) or not isinstance(raw_time, int | float):
        raise ProtocolError("malformed time penalty", orjson.dumps(data))
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


def _decode_messages(raw: bytes) -> tuple[Message, ...]:
    body = _loads(raw[1:], "message frame", raw)
    if type(body) is not list:
        raise ProtocolError("message frame is not a JSON array", raw)
    # Props events, the live stream, go straight to their decoder: at tens of
    # thousands of events per second the dispatch through _decode_message and
    # _decode_event costs about as much as the JSON parsing itself.
    messages: list[Message] = []
    for item in body:
        if type(item) is dict and item.get("e") == "props":
            messages.append(_decode_props(item.get("d"), raw))
        else:
            messages.append(_decode_message(item, raw))
    return tuple(messages)


def _decode_message(item: Any, origin: bytes) -> Message:
    if isinstance(item, str):
        # Some servers are reported to send messages as JSON strings inside the
        # array; accept them when they hold an object.
        item = _loads(item.encode("utf-8", "surrogatepass"), "string message", origin)
    if not isinstance(item, dict):
        raise ProtocolError("message is not a JSON object", origin)
    if "e" in item:
        return _decode_event(item, origin)
    if "s" in item:
        return _decode_response(item, origin)
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
    return Response(status=status, id=rid, data=data)


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


def _decode_event(item: dict[str, Any], origin: bytes) -> Message:
    name, data = item["e"], item.get("d")
    if not isinstance(name, str):
        raise ProtocolError("event name is not a string", origin)
    if name == "props":
        return _decode_props(data, origin)
    if name == "shutdown":
        if not isinstance(data, dict):
            data = {}
        code, reason = data.get("reasonCode"), data.get("reason")
        return ShutdownEvent(
            reason_code=code if isinstance(code, str) else None,
            reason=reason if isinstance(reason, str) else None,
        )
    return SystemEvent(name=name, data=data)


def _decode_props(data: Any, origin: bytes) -> PropsEvent:
    if not isinstance(data, dict):
        raise ProtocolError("props event without an object payload", origin)
    entity_type, event_type, entity = data.get("entityType"), data.get("eventType"), data.get("entity")
    if not isinstance(entity_type, str) or not entity_type:
        raise ProtocolError("props event without entityType", origin)
    if not isinstance(event_type, str):
        raise ProtocolError("props event without eventType", origin)
    entities = tuple(entity) if isinstance(entity, list) else (entity,)
    for one in entities:
        if not isinstance(one, dict) or not is_int(one.get("id")):
            raise ProtocolError(f"{entity_type} entity without an integer id", origin)
    return PropsEvent(entity_type=entity_type, event_type=event_type, entities=entities)


def is_int(value: Any) -> bool:
    """An int that is not a bool (JSON true would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)



# --- encoding ------------------------------------------------------------------

_ENDPOINT = re.compile(r"[A-Za-z][A-Za-z0-9/]*")


def encode_request(endpoint: str, request_id: int, query: str = "", body: Any = None) -> str:
    """``endpoint\\nid\\nquery\\nbody``; ``body`` is JSON-encoded unless it is already text."""
    if not _ENDPOINT.fullmatch(endpoint):
        raise ValueError(f"invalid endpoint {endpoint!r}")
    if "\n" in query:
        raise ValueError("query must not contain a newline")
    if body is None:
        text = ""
    elif isinstance(body, str):
        text = body
    else:
        text = orjson.dumps(body).decode()
    return f"{endpoint}\n{request_id}\n{query}\n{text}"


def encode_authorize(request_id: int, token: str) -> str:
    """``authorize`` carries the raw access token as its body, never JSON."""
    if not token or any(ch in token for ch in "\r\n"):
        raise ValueError("access token is empty or contains a newline")
    return encode_request("authorize", request_id, "", token)


def sync_request_body(
    *,
    divisor: int | None = None,
    remainder: int | None = None,
    expression: Literal["modAccountId", "modUserId"] = "modAccountId",
    entity_types: Sequence[str] = (),
    split_responses: bool = True,
    users: Sequence[int] | None = None,
    accounts: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The ``user/syncrequest`` body, refusing combinations the docs forbid."""
    sharded = divisor is not None or remainder is not None
    if sharded:
        if users is not None or accounts is not None:
            raise ValueError("users/accounts cannot be combined with shardingExpression")
        if divisor is None or remainder is None or divisor < 1 or not 0 <= remainder < divisor:
            raise ValueError(f"invalid sharding: remainder {remainder} of divisor {divisor}")
        if expression not in EXPRESSION_TYPES:
            raise ValueError(f"invalid expressionType {expression!r}")
    if users is not None and entity_types:
        raise ValueError("users cannot be combined with entityTypes")
    body: dict[str, Any] = {"splitResponses": split_responses}
    if users is not None:
        body["users"] = list(users)
    if accounts is not None:
        body["accounts"] = list(accounts)
    if entity_types:
        body["entityTypes"] = list(entity_types)
    if sharded:
        body["shardingExpression"] = {
            "expressionType": expression,
            "divisor": divisor,
            "remainder": remainder,
        }
    return body
