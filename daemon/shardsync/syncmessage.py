"""The initial snapshot of a sync request (a ``SyncMessage``): its collections and how a split one ends (pure).

A snapshot body is an object of plural collection names, each an array of
entities (tradovate-protocol.md section 4.3).  This module turns one body into
``(entityType, entity)`` pairs and recognises the end markers a split
snapshot may carry; deciding when a split snapshot is complete is
``worker/snapshot.py``'s job.

It owns the validation of snapshot entities (``protocol`` owns that of
props), by the rules of ``quarantine``: an entity no sink could store is
handed back as a :class:`~shardsync.quarantine.Refusal` and the rest of the
snapshot proceeds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final

from shardsync import quarantine
from shardsync.protocol import ProtocolError
from shardsync.quarantine import LINKS as _LINKS
from shardsync.quarantine import MAX_DEPTH, SNAPSHOT, Refusal, Unreadable, problem, refuse, render, too_deep

__all__ = ["COLLECTIONS", "SNAPSHOT", "is_snapshot_end", "singular", "snapshot_entities"]


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


def snapshot_entities(
    data: Any, refused: list[Refusal], nesting: int | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every storable ``(entityType, entity)`` in one snapshot response body; the others go to ``refused``.

    Only list-valued keys are collections; ``null`` collections are empty and
    scalar keys (completion flags of split snapshots) are not entities.  A
    collection salvage could not read as an array is refused whole, as one
    Refusal of its type.  ``nesting`` bounds the objects and arrays in
    ``data`` (``Response.nesting``): when the collections and their entities
    account for all but fewer than MAX_DEPTH of them, no entity can be too
    deep and none is walked; None walks every one.
    """
    if not isinstance(data, dict):
        raise ProtocolError("snapshot body is not an object", render(data))
    deep = nesting is None or nesting - _structure(data) >= MAX_DEPTH
    for key, value in data.items():
        if isinstance(value, Unreadable):
            refused.append(refuse(singular(key), SNAPSHOT, value, value.reason))
        if value is None or not isinstance(value, list):
            continue
        entity_type = singular(key)
        link = _LINKS.get(entity_type)
        for entity in value:
            reason = problem(entity, link)
            if reason is None and deep and too_deep(entity):
                reason = quarantine.TOO_DEEP
            if reason is None:
                yield entity_type, entity
            else:
                refused.append(refuse(entity_type, SNAPSHOT, entity, reason))


def _structure(data: dict[str, Any]) -> int:
    """The containers of ``data`` that are not inside an entity: itself, its collections, their objects."""
    count = 1
    for value in data.values():
        if type(value) is list:
            count += 1 + sum(1 for entity in value if type(entity) is dict)
    return count


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
    if any(isinstance(value, list | Unreadable) for value in data.values()):
        return False
    return any(data.get(flag) is True for flag in _END_FLAGS)
