"""Ground truth of the fake server: every entity by (entityType, id), and which shard owns it.

Routing follows the hypothesis of tradovate-protocol.md §4.6: entities with an
``accountId`` (or whose id is the account id) route by that account; children
without one route through their owner chain (fill -> order -> account,
fillPair -> position -> account, commandReport -> command -> order -> account);
reference data and user-level entities go to every shard or to remainder 0
only (a switch). Under ``modUserId`` the account's ``userId`` decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from shardsync.change import Entity, Key
from shardsync.simulator.history import History

ENTITY_TYPES: tuple[str, ...] = (
    "user", "userProperty", "property", "account", "accountRiskStatus", "marginSnapshot",
    "userAccountAutoLiq", "cashBalance", "currency", "position", "fillPair", "order", "contract",
    "contractMaturity", "product", "exchange", "spreadDefinition", "command", "commandReport",
    "executionReport", "orderVersion", "fill", "fillFee", "orderStrategy", "orderStrategyLink",
    "userPlugin", "annualReview", "userReadStatus", "userPromoCode", "contractGroup", "orderStrategyType",
)  # fmt: skip

_IRREGULAR_PLURALS = {
    "accountRiskStatus": "accountRiskStatuses",
    "currency": "currencies",
    "property": "properties",
    "userProperty": "userProperties",
    "contractMaturity": "contractMaturities",
    "orderStrategy": "orderStrategies",
    "userReadStatus": "userReadStatuses",
}
PLURALS: dict[str, str] = {t: _IRREGULAR_PLURALS.get(t, t + "s") for t in ENTITY_TYPES}
SINGULARS: dict[str, str] = {p: t for t, p in PLURALS.items()}

#: Collections present in every snapshot, empty or not (required in OAS26 SyncMessage).
ALWAYS_PRESENT = ("users", "contractGroups")

REFERENCE_TYPES = frozenset(
    {"property", "currency", "contract", "contractMaturity", "product", "exchange", "spreadDefinition",
     "contractGroup", "orderStrategyType"}
)  # fmt: skip
USER_TYPES = frozenset({"user", "userProperty", "userPlugin", "annualReview", "userReadStatus", "userPromoCode"})
ACCOUNT_KEYED_TYPES = frozenset({"account", "accountRiskStatus", "marginSnapshot", "userAccountAutoLiq"})
ACCOUNT_FIELD_TYPES = frozenset({"cashBalance", "position", "order", "executionReport", "orderStrategy"})
#: child type -> (field holding the parent id, parent type)
PARENTS: dict[str, tuple[str, str]] = {
    "orderVersion": ("orderId", "order"),
    "fill": ("orderId", "order"),
    "command": ("orderId", "order"),
    "commandReport": ("commandId", "command"),
    "fillPair": ("positionId", "position"),
    "fillFee": ("id", "fill"),
    "orderStrategyLink": ("orderStrategyId", "orderStrategy"),
}


@dataclass(frozen=True)
class Shard:
    expression: str
    divisor: int
    remainder: int


@dataclass(frozen=True)
class Scope:
    """What one syncrequest asked for; ``None`` fields do not restrict."""

    shard: Shard | None = None
    users: frozenset[int] | None = None
    accounts: frozenset[int] | None = None
    entity_types: frozenset[str] | None = None


@dataclass(frozen=True)
class Mutation:
    """One mutation of the truth, with the owner resolved when it happened (deletions need it)."""

    entity_type: str
    event_type: str  # Created | Updated | Deleted
    entity: Entity
    account_id: int | None
    user_id: int | None

    @property
    def key(self) -> Key:
        return (self.entity_type, int(self.entity["id"]))

    def as_json(self) -> dict[str, Any]:
        return {"entityType": self.entity_type, "eventType": self.event_type, "entity": self.entity}


class Truth:
    """The entity store. Entities are replaced, never mutated in place, so senders may hold them.

    Every creation and deletion is also recorded in ``history`` (when the server had what).
    """

    def __init__(self, reference_routing: str = "all", history: History | None = None) -> None:
        self.reference_routing = reference_routing
        self.history = history if history is not None else History()
        self.entities: dict[str, dict[int, Entity]] = {t: {} for t in ENTITY_TYPES}
        self._owners: dict[Key, tuple[int | None, int | None]] = {}
        self._next_ids: dict[str, int] = {}

    # -- identity -------------------------------------------------------------
    def next_id(self, entity_type: str) -> int:
        """A fresh id; each type has its own range so (entityType, id) never collides across types."""
        base = (ENTITY_TYPES.index(entity_type) + 1) * 1_000_000
        value = self._next_ids.get(entity_type, base + 1)
        self._next_ids[entity_type] = value + 1
        return value

    def get(self, entity_type: str, entity_id: int) -> Entity | None:
        return self.entities[entity_type].get(entity_id)

    def of_type(self, entity_type: str) -> Iterable[Entity]:
        return self.entities[entity_type].values()

    def __len__(self) -> int:
        return sum(len(v) for v in self.entities.values())

    def items(self) -> Iterator[tuple[str, Entity]]:
        for entity_type, by_id in self.entities.items():
            for entity in by_id.values():
                yield entity_type, entity

    # -- mutation --------------------------------------------------------------
    def upsert(self, entity_type: str, entity: Entity) -> Mutation:
        if entity_type not in self.entities:
            raise ValueError(f"unknown entity type {entity_type!r}")
        entity_id = int(entity["id"])
        event = "Updated" if entity_id in self.entities[entity_type] else "Created"
        self.entities[entity_type][entity_id] = entity
        if event == "Created":
            self.history.created((entity_type, entity_id))
        owner = self._resolve_owner(entity_type, entity)
        self._owners[(entity_type, entity_id)] = owner
        return Mutation(entity_type, event, entity, owner[0], owner[1])

    def add_unpublished(self, entity_type: str, entity: Entity, account_id: int | None, user_id: int | None) -> None:
        """Store a new entity whose owners the caller knows (:mod:`.bulk`): no lookup, no Mutation made."""
        entity_id = entity["id"]
        self.entities[entity_type][entity_id] = entity
        self.history.created((entity_type, entity_id))
        self._owners[(entity_type, entity_id)] = (account_id, user_id)

    def delete(self, entity_type: str, entity_id: int) -> Mutation | None:
        entity = self.entities[entity_type].pop(entity_id, None)
        if entity is None:
            return None
        self.history.deleted((entity_type, entity_id))
        account_id, user_id = self._owners.pop((entity_type, entity_id), (None, None))
        return Mutation(entity_type, "Deleted", entity, account_id, user_id)

    def _resolve_owner(self, entity_type: str, entity: Entity) -> tuple[int | None, int | None]:
        account_id: int | None = None
        if entity_type in ACCOUNT_KEYED_TYPES:
            account_id = int(entity["id"])
        elif entity_type in ACCOUNT_FIELD_TYPES:
            account_id = entity.get("accountId")
        elif entity_type in PARENTS:
            link, parent_type = PARENTS[entity_type]
            account_id = self._owners.get((parent_type, entity.get(link, -1)), (None, None))[0]
        user_id: int | None = None
        if entity_type == "user":
            user_id = int(entity["id"])
        elif entity_type in USER_TYPES or entity_type == "account":
            user_id = entity.get("userId")
        elif account_id is not None:
            user_id = self._owners.get(("account", account_id), (None, None))[1]
        return account_id, user_id

    def owner(self, entity_type: str, entity_id: int) -> tuple[int | None, int | None]:
        return self._owners.get((entity_type, entity_id), (None, None))

    # -- routing ---------------------------------------------------------------
    def routes_to(self, entity_type: str, account_id: int | None, user_id: int | None, scope: Scope) -> bool:
        """Whether an entity with these owners belongs to ``scope`` (entityTypes not considered)."""
        if entity_type in REFERENCE_TYPES:
            return scope.shard is None or self.reference_routing == "all" or scope.shard.remainder == 0
        if scope.users is not None:
            return user_id in scope.users
        if scope.accounts is not None:
            if entity_type in USER_TYPES:
                return any(self.owner("account", a)[1] == user_id for a in scope.accounts)
            return account_id in scope.accounts
        shard = scope.shard
        if shard is None:
            return True
        if shard.expression == "modAccountId":
            if entity_type in USER_TYPES:
                return self.reference_routing == "all" or shard.remainder == 0
            key = account_id
        else:
            key = user_id
        if key is None:
            # An orphan (parent already gone): remainder 0 keeps it visible exactly once.
            return shard.remainder == 0
        return key % shard.divisor == shard.remainder

    def wants(self, change: Mutation, scope: Scope) -> bool:
        if scope.entity_types is not None and change.entity_type not in scope.entity_types:
            return False
        return self.routes_to(change.entity_type, change.account_id, change.user_id, scope)

    def select(self, scope: Scope) -> dict[Key, Entity]:
        """The ground truth of one scope, keyed by (entityType, id)."""
        out: dict[Key, Entity] = {}
        for entity_type, by_id in self.entities.items():
            if scope.entity_types is not None and entity_type not in scope.entity_types:
                continue
            for entity_id, entity in by_id.items():
                account_id, user_id = self._owners.get((entity_type, entity_id), (None, None))
                if self.routes_to(entity_type, account_id, user_id, scope):
                    out[(entity_type, entity_id)] = entity
        return out

    def snapshot(self, scope: Scope, every_collection: bool = False) -> dict[str, list[Entity]]:
        """The SyncMessage for ``scope``: plural collection -> entities, users/contractGroups always present
        (``every_collection``: all 31 collections, in the order of OAS26 SyncMessage, empty ones too)."""
        names = PLURALS.values() if every_collection else ALWAYS_PRESENT
        collections: dict[str, list[Entity]] = {name: [] for name in names}
        for (entity_type, _), entity in self.select(scope).items():
            collections.setdefault(PLURALS[entity_type], []).append(entity)
        return collections

    def accounts_in(self, scope: Scope) -> list[int]:
        """Account ids whose own row routes to ``scope`` (entityTypes not considered)."""
        found = []
        for account_id in self.entities["account"]:
            owner_account, user_id = self.owner("account", account_id)
            if self.routes_to("account", owner_account, user_id, Scope(scope.shard, scope.users, scope.accounts)):
                found.append(account_id)
        return found
