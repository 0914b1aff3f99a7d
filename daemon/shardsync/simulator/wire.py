"""Pure wire helpers of the fake server: request parsing, syncrequest validation, snapshot chunking."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson

from shardsync.change import Entity
from shardsync.simulator.options import EXPRESSIONS
from shardsync.simulator.truth import ALWAYS_PRESENT, ENTITY_TYPES, Scope, Shard


class RequestError(ValueError):
    """A client frame that is not a well-formed ``endpoint\\nid\\nquery\\nbody`` request."""


@dataclass(frozen=True)
class Request:
    endpoint: str
    id: int
    query: str
    body: str


def parse_request(text: str) -> Request:
    parts = text.split("\n", 3)
    if len(parts) < 2:
        raise RequestError("request must be endpoint\\nid\\nquery\\nbody")
    try:
        request_id = int(parts[1])
    except ValueError:
        raise RequestError(f"request id {parts[1][:40]!r} is not an integer") from None
    return Request(parts[0].strip(), request_id, parts[2] if len(parts) > 2 else "", parts[3] if len(parts) > 3 else "")


def frame(messages: list[dict[str, Any]]) -> bytes:
    return b"a" + orjson.dumps(messages)


def response(request_id: int, status: int, data: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"s": status, "i": request_id}
    if data is not None:
        message["d"] = data
    return message


def error_text(text: str, quoting: str) -> str:
    """Error ``d``: plain, or JSON-quoted a second time as one third-party client observed."""
    return orjson.dumps(text).decode() if quoting == "json" else text


def parse_authorize(request: Request, body_mode: str) -> tuple[str, str | None]:
    """The token and p-ticket of an ``authorize`` request.

    The raw token is always accepted; ``body_mode="lenient"`` also takes it JSON-quoted
    (``"<token>"``, as Tradovate's sample clients send it). How a penalty ticket rides on
    authorize is undocumented, so both plausible forms are read in either mode: a query
    ``p-ticket=<ticket>``, and a JSON body ``{"token": ..., "p-ticket": ...}``. A JSON object
    without ``p-ticket`` is not a token form (it is the documented mistake) and fails as one.
    """
    body = request.body.strip()
    ticket = parse_qs(request.query).get("p-ticket", [None])[-1]
    if body.startswith("{"):
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("p-ticket"), str):
            token = data.get("token")
            return (token if isinstance(token, str) else ""), data["p-ticket"]
    if body_mode == "lenient" and len(body) >= 2 and body.startswith('"') and body.endswith('"'):
        try:
            quoted = orjson.loads(body)
        except orjson.JSONDecodeError:
            quoted = None
        if isinstance(quoted, str):
            return quoted, ticket
    return body, ticket


def sync_ticket(body: str) -> str | None:
    """The ``p-ticket`` of a syncrequest resend (a key added to its JSON body), if any."""
    try:
        data = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError:
        return None
    ticket = data.get("p-ticket") if isinstance(data, dict) else None
    return ticket if isinstance(ticket, str) else None


@dataclass(frozen=True)
class SyncRequest:
    scope: Scope
    split: bool


def parse_sync(body: str, entity_types_default: str) -> SyncRequest:
    """Validate a user/syncrequest body per tradovate-protocol.md §4.2; ValueError names the rule.

    Without ``entityTypes``: ``all`` -> every type, ``empty`` -> none, ``per_form`` -> none for a
    sharded request (the documented default) and every type for any unsharded form (users,
    accounts or neither), which is what Tradovate's sample clients expect.
    """
    try:
        data = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError:
        raise ValueError("syncrequest body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ValueError("syncrequest body must be a JSON object")
    users = _id_list(data, "users")
    accounts = _id_list(data, "accounts")
    sharding = data.get("shardingExpression")
    has_types = data.get("entityTypes") is not None
    if users is not None and sharding is not None:
        raise ValueError("users cannot be combined with shardingExpression")
    if users is not None and has_types:
        raise ValueError("users cannot be combined with entityTypes")
    if accounts is not None and sharding is not None:
        raise ValueError("accounts cannot be combined with shardingExpression")
    shard = _shard(sharding) if sharding is not None else None
    entity_types: frozenset[str] | None
    if has_types:
        raw = data["entityTypes"]
        if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
            raise ValueError("entityTypes must be a list of entity type names")
        unknown = sorted(set(raw) - set(ENTITY_TYPES))
        if unknown:
            raise ValueError(f"unknown entityTypes: {', '.join(unknown)}")
        entity_types = frozenset(raw)
    elif entity_types_default == "all" or (entity_types_default == "per_form" and shard is None):
        entity_types = None
    else:
        entity_types = frozenset()
    split = data.get("splitResponses")
    if split is not None and not isinstance(split, bool):
        raise ValueError("splitResponses must be a boolean")
    return SyncRequest(Scope(shard, users, accounts, entity_types), split is True)


def _id_list(data: dict[str, Any], key: str) -> frozenset[int] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{key} must be a list of integer ids")
    return frozenset(value)


def _shard(sharding: Any) -> Shard:
    if not isinstance(sharding, dict):
        raise ValueError("shardingExpression must be an object")
    missing = [k for k in ("expressionType", "divisor", "remainder") if k not in sharding]
    if missing:
        raise ValueError(f"shardingExpression requires {', '.join(missing)}")
    expression, divisor, remainder = sharding["expressionType"], sharding["divisor"], sharding["remainder"]
    if expression not in EXPRESSIONS:
        raise ValueError(f"shardingExpression.expressionType must be one of {', '.join(EXPRESSIONS)}")
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 1:
        raise ValueError("shardingExpression.divisor must be an integer >= 1")
    if not isinstance(remainder, int) or isinstance(remainder, bool) or not 0 <= remainder < divisor:
        raise ValueError("shardingExpression.remainder must be an integer with 0 <= remainder < divisor")
    return Shard(expression, divisor, remainder)


def chunk_snapshot(snapshot: dict[str, list[Entity]], chunks: int,
                   first: Iterable[str] = ALWAYS_PRESENT) -> list[dict[str, list[Entity]]]:
    """Split a SyncMessage into exactly ``chunks`` parts; the first carries every collection of ``first``.

    Entities are dealt out in order, so a collection may span two chunks; when
    there are fewer entities than chunks the trailing chunks are ``{}``.
    """
    items = [(name, entity) for name, entities in snapshot.items() for entity in entities]
    parts: list[dict[str, list[Entity]]] = []
    for n in range(chunks):
        part: dict[str, list[Entity]] = {}
        for name, entity in items[n * len(items) // chunks:(n + 1) * len(items) // chunks]:
            part.setdefault(name, []).append(entity)
        parts.append(part)
    for name in first:
        parts[0].setdefault(name, [])
    return parts


def snapshot_messages(request_id: int, chunks: list[dict[str, list[Entity]]], split_end: str,
                      between: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The snapshot responses for ``chunks``, ``between()``'s props after each, then the end marker
    ``split_end`` asks for (``none``, ``empty`` -> ``d:{}``, ``flag`` -> ``d:{"done":true}``)."""
    messages: list[dict[str, Any]] = []
    for chunk in chunks:
        messages.append(response(request_id, 200, chunk))
        messages += between()
    if split_end == "empty":
        messages.append(response(request_id, 200, {}))
    elif split_end == "flag":
        messages.append(response(request_id, 200, {"done": True}))
    return messages


def stamped(data: dict[str, Any], now: float) -> dict[str, Any]:
    """``data`` with ``"ts": now`` in copies of its entity (or entities): the truth's own are shared."""
    entity = data.get("entity")
    if isinstance(entity, list):
        copies: Any = [dict(e, ts=now) if isinstance(e, dict) else e for e in entity]
    else:
        copies = dict(entity, ts=now) if isinstance(entity, dict) else entity
    return dict(data, entity=copies)
