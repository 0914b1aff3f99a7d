"""Requests to the server: the text frames a client sends (pure; re-exported by ``protocol``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final, Literal

import orjson

__all__ = ["EXPRESSION_TYPES", "encode_authorize", "encode_request", "sync_request_body"]

EXPRESSION_TYPES: Final = frozenset({"modAccountId", "modUserId"})

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
