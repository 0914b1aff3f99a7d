"""The one record that flows from the mirror to the sinks: a change to a shard's state."""

from __future__ import annotations

from typing import Any, Literal

import orjson

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


#: ``Change(entity=UNPARSED, data=text)``: the entity is parsed from its text only when read.
UNPARSED: Any = type("Unparsed", (), {"__repr__": lambda self: "UNPARSED", "__slots__": ()})()

_FIELDS = ("origin", "entity_type", "event_type", "id", "entity", "received_at", "account_id")


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
    follows fills to their order); None when unknown.  ``data`` is ``entity``'s
    JSON text when its maker has it already (the mirror does): the sinks store
    that text rather than serialise the entity again.  Made with ``entity=UNPARSED``
    (a snapshot's million changes), the entity is parsed from ``data`` on each read
    and never held: the sinks read only ``data``.

    A plain class with slots, not a dataclass: one is made per change on the hot
    path, and the entity must be able to wait in its text.  Treat instances as
    immutable but for the mirror's late ``account_id``.
    """

    __slots__ = ("_entity", "account_id", "data", "entity_type", "event_type", "id", "origin", "received_at")

    def __init__(self, origin: Origin, entity_type: str, event_type: str, id: int | None,  # noqa: PLR0917
                 entity: Any, received_at: str, account_id: int | None = None, data: str | None = None) -> None:
        if entity is UNPARSED and data is None:
            raise ValueError("an unparsed entity needs its data")
        self.origin = origin
        self.entity_type = entity_type
        self.event_type = event_type
        self.id = id
        self._entity = entity
        self.received_at = received_at
        self.account_id = account_id
        self.data = data

    @property
    def entity(self) -> Any:
        entity = self._entity
        return orjson.loads(self.data) if entity is UNPARSED else entity  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        if type(other) is not Change:
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _FIELDS)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "Change(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS) + ")"


def account_id_of(entity_type: str, entity: Any) -> int | None:
    """The account an entity belongs to when the entity itself says so (no parent lookup)."""
    if not isinstance(entity, dict):
        return None
    if entity_type in ACCOUNT_KEYED_TYPES:
        value = entity.get("id")
    else:
        value = entity.get("accountId")
    return value if type(value) is int else None
