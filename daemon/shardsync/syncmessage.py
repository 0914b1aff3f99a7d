"""The initial snapshot of a sync request (a ``SyncMessage``): its collections and how a split one ends (pure).

A snapshot body is an object of plural collection names, each an array of
entities (tradovate-protocol.md section 4.3).  This module turns one body into
``(entityType, entity)`` pairs and recognises the end markers a split
snapshot may carry; deciding when a split snapshot is complete is
``worker/snapshot.py``'s job.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final

import orjson

from shardsync.protocol import ProtocolError, is_int

__all__ = ["COLLECTIONS", "is_snapshot_end", "singular", "snapshot_entities"]


#: Plural collection name in a SyncMessage -> singular entityType.
COLLECTIONS: Final[Mapping[str, str]] = {
    "users": "user",
    "userProperties": "userProperty",
    "properties": "property",
    "accounts": "account",
    "accountRiskStatuses": "accountRiskStatus",
    "marginSnapshots": "marginSnapshot",
    "userAccountAutoLiqs": "userAccountAutoLiq",
    "cashBalances": "cashBalance",
    "currencies": "currency",
    "positions": "position",
    "fillPairs": "fillPair",
    "orders": "order",
    "contracts": "contract",
    "contractMaturities": "contractMaturity",
    "products": "product",
    "exchanges": "exchange",
    "spreadDefinitions": "spreadDefinition",
    "commands": "command",
    "commandReports": "commandReport",
    "executionReports": "executionReport",
    "orderVersions": "orderVersion",
    "fills": "fill",
    "fillFees": "fillFee",
    "orderStrategies": "orderStrategy",
    "orderStrategyLinks": "orderStrategyLink",
    "userPlugins": "userPlugin",
    "annualReviews": "annualReview",
    "userReadStatuses": "userReadStatus",
    "userPromoCodes": "userPromoCode",
    "contractGroups": "contractGroup",
    "orderStrategyTypes": "orderStrategyType",
}


def singular(collection: str) -> str:
    """The entityType of a snapshot collection, known or not (the official cache's rule)."""
    known = COLLECTIONS.get(collection)
    if known is not None:
        return known
    if collection.endswith("ies"):
        return collection[:-3] + "y"
    if collection.endswith("ses"):
        return collection[:-2]
    if collection.endswith("s"):
        return collection[:-1]
    return collection


def snapshot_entities(data: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``(entityType, entity)`` in one snapshot response body.

    Only list-valued keys are collections; ``null`` collections are empty and
    scalar keys (completion flags of split snapshots) are not entities.
    """
    if not isinstance(data, dict):
        raise ProtocolError("snapshot body is not an object", _dump(data))
    for key, value in data.items():
        if value is None or not isinstance(value, list):
            continue
        entity_type = singular(key)
        for entity in value:
            if not isinstance(entity, dict) or not is_int(entity.get("id")):
                raise ProtocolError(f"snapshot {key} entry without an integer id", _dump(entity))
            yield entity_type, entity


#: Scalar keys that servers could use to mark the last chunk of a split snapshot.
_END_FLAGS: Final = ("done", "end", "last", "complete", "completed", "final", "eos")


def is_snapshot_end(data: Any) -> bool:
    """True when a same-id chunk explicitly marks the end of a split snapshot.

    Two markers are recognised: an empty body (``{}`` or ``null``) and a body
    holding no collection but a true completion flag (``{"done": true}``...).
    """
    if data is None or data == {}:
        return True
    if not isinstance(data, dict):
        return False
    if any(isinstance(value, list) for value in data.values()):
        return False
    return any(data.get(flag) is True for flag in _END_FLAGS)


def _dump(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return repr(value).encode()
