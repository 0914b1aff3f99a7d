"""The one record that flows from the mirror to the sinks: a change to a shard's state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

#: ``rejected``: an entity the worker quarantined (kept in the change log, never applied to state).
Origin = Literal["snapshot", "resync", "live", "system", "rejected"]

#: Origins that are only logged: they never create, change or remove an entity row.
LOG_ONLY_ORIGINS = frozenset({"system", "rejected"})

#: A shard's entity key: ``(entityType, id)``.
Key = tuple[str, int]
Entity = dict[str, Any]

#: The event types of entity changes (props and reconciliation); nothing else exists in the protocol.
UPSERT_EVENTS = frozenset({"Created", "Updated"})
DELETE_EVENT = "Deleted"
EVENT_TYPES = UPSERT_EVENTS | {DELETE_EVENT}

#: Entity types whose ``id`` is the account id itself (one row per account).
ACCOUNT_KEYED_TYPES = frozenset(
    {"account", "accountRiskStatus", "marginSnapshot", "userAccountAutoLiq"}
)

#: Entity types that carry no ``accountId`` and belong to the account of the entity they hang
#: off (tradovate-protocol.md, the routing table): type -> (field holding the parent id, parent type).
ACCOUNT_VIA: dict[str, tuple[str, str]] = {
    "fill": ("orderId", "order"),
    "orderVersion": ("orderId", "order"),
    "command": ("orderId", "order"),
    "commandReport": ("commandId", "command"),
    "fillPair": ("positionId", "position"),
    "fillFee": ("id", "fill"),
    "orderStrategyLink": ("orderStrategyId", "orderStrategy"),
}


# Not frozen: a frozen dataclass costs ~1 us more per instance, and one is made
# per change on the hot path.  Treat instances as immutable all the same.
@dataclass(slots=True)
class Change:
    """A single change of a shard, as written to the sinks' change log.

    ``event_type`` is ``Created``/``Updated``/``Deleted`` for entity changes;
    for system and unknown events (``origin == "system"``) ``entity_type`` is
    the event name, ``event_type`` is ``"Event"``, ``id`` is None and
    ``entity`` holds the payload as received.  A quarantined entity
    (``origin == "rejected"``, see ``quarantine``) has its type, the props
    ``eventType`` (``Snapshot``, ``Event`` for a whole system event), its id
    only when it fits int64, and ``Refusal.record()`` as ``entity``.  ``account_id`` is the account
    the change belongs to, attributed by whoever made the change (the mirror
    follows fills to their order); None when unknown.
    """

    origin: Origin
    entity_type: str
    event_type: str
    id: int | None
    entity: Any
    received_at: str
    account_id: int | None = None


def account_id_of(entity_type: str, entity: Any) -> int | None:
    """The account an entity belongs to when the entity itself says so (no parent lookup)."""
    if not isinstance(entity, dict):
        return None
    if entity_type in ACCOUNT_KEYED_TYPES:
        value = entity.get("id")
    else:
        value = entity.get("accountId")
    return value if type(value) is int else None
