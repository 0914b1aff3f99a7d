"""Which entities a sink can store, and what is kept of one it cannot (pure).

The codec owns entity validation (``protocol`` for props, ``syncmessage``
for snapshot collections); both use the rules here.  An entity is refused
(quarantined) when:

* it is not an object, or its ``id`` is not an integer (a bool is not one);
* its ``id``, its ``accountId`` or the parent link the mirror attributes it
  through (:data:`LINKS`: a fill's ``orderId``...) is an integer outside
  signed 64 bits: ``entities.id`` and ``account_id`` are SQLite INTEGER and
  PostgreSQL bigint, and the PostgreSQL upgrade casts the link to bigint;
* it nests deeper than :data:`MAX_DEPTH`: orjson writes at most 254 levels and
  the jsonl sink wraps every entity in its line object;
* its text is something orjson cannot parse at all (:class:`Unreadable`, made
  by ``salvage``: nesting beyond orjson's 1024 levels, bad UTF-8, ...).

A refused entity never touches the mirror or the ``entities`` table: it is
logged, counted and kept in the change log as a change with origin
``rejected`` whose data is :meth:`Refusal.record`.

Everything here is iterative and bounded: values nested 1000 deep must not
reach Python's recursion limit (``==``, ``repr`` and structlog's rendering
all recurse), so nothing here hands a whole entity to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from shardsync.change import ACCOUNT_KEYED_TYPES, ACCOUNT_VIA
from shardsync.clip import clip

__all__ = [
    "EXCERPT",
    "INT64_MAX",
    "INT64_MIN",
    "LINKS",
    "MAX_DEPTH",
    "SNAPSHOT",
    "Refusal",
    "Unreadable",
    "fits",
    "held",
    "problem",
    "refuse",
    "render",
    "too_deep",
]

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

#: The deepest entity every sink writes: orjson refuses to write 255 levels, and a jsonl
#: line (``{"entity": ...}``) and a jsonl state file (``[type, id, entity]``) add one.
#: A container is one level: ``{"id": 1}`` is 1 deep, ``{"a": [[]]}`` 3.
MAX_DEPTH: Final = 253

#: Characters of an entity shown in a log line and kept in the rejected record.
EXCERPT: Final = 120

#: The field each child type names its parent by (``ACCOUNT_VIA``), the one the mirror and the
#: PostgreSQL upgrade read as an integer id.
LINKS: Final[dict[str, str]] = {child: link for child, (link, _parent) in ACCOUNT_VIA.items() if link != "id"}

#: The event type of a refused snapshot entity's rejected change.
SNAPSHOT: Final = "Snapshot"

#: Reasons, fixed texts so that log lines can be limited per reason (``ratelimit``).
NOT_AN_OBJECT: Final = "not an object"
ID_NOT_INT: Final = "id is not an integer"
TOO_DEEP: Final = f"nested deeper than {MAX_DEPTH} levels"
UNREADABLE: Final = "unreadable JSON"


def out_of_range(name: str) -> str:
    return f"{name} outside signed 64-bit"


def fits(value: object) -> bool:
    """An int (not a bool) that fits a signed 64-bit column."""
    return type(value) is int and INT64_MIN <= value <= INT64_MAX


def problem(entity: object, link: str | None) -> str | None:
    """Why ``entity`` cannot be stored, depth aside, or None; ``link`` is its type's :data:`LINKS` field.

    On the live hot path: one call per entity, dict lookups only.
    """
    if type(entity) is not dict:
        return NOT_AN_OBJECT
    ident = entity.get("id")
    if type(ident) is not int:
        return ID_NOT_INT
    if not INT64_MIN <= ident <= INT64_MAX:
        return out_of_range("id")
    account = entity.get("accountId")
    if type(account) is int and not INT64_MIN <= account <= INT64_MAX:
        return out_of_range("accountId")
    if link is not None:
        parent = entity.get(link)
        if type(parent) is int and not INT64_MIN <= parent <= INT64_MAX:
            return out_of_range(link)
    return None


def _children(value: dict[str, Any] | list[Any]) -> Iterator[Any]:
    return iter(value.values()) if isinstance(value, dict) else iter(value)


def too_deep(value: object, limit: int = MAX_DEPTH) -> bool:
    """True when ``value`` nests containers more than ``limit`` levels (iterative, stops at the limit)."""
    if not isinstance(value, dict | list):
        return False
    stack = [_children(value)]
    while stack:
        for child in stack[-1]:
            kind = type(child)
            if kind is dict or kind is list:
                if len(stack) >= limit:
                    return True
                stack.append(_children(child))
                break
        else:
            stack.pop()
    return False


def _scalar(value: object, limit: int) -> str:
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return type(value).__name__


def _members(value: dict[str, Any] | list[Any], limit: int) -> Iterator[tuple[str, Any]]:
    """(prefix, child) pairs of a container: ``,"key":`` before each member but the first."""
    if isinstance(value, dict):
        for index, (key, child) in enumerate(value.items()):
            yield ("," if index else "") + _scalar(str(key), limit) + ":", child
    else:
        for index, child in enumerate(value):
            yield ("," if index else ""), child


def render(value: object, limit: int = EXCERPT) -> str:
    """A JSON-like rendering of ``value`` cut after ``limit`` characters (iterative: any depth, any size)."""
    out: list[str] = []
    size = 0
    # Per open container: its (prefix, child) pairs and its closing bracket.
    stack: list[tuple[Iterator[tuple[str, Any]], str]] = [(iter((("", value),)), "")]
    while stack and size <= limit:
        pairs, closer = stack[-1]
        pair = next(pairs, None)
        if pair is None:
            stack.pop()
            piece = closer
        else:
            prefix, child = pair
            if isinstance(child, dict | list):
                stack.append((_members(child, limit), "}" if isinstance(child, dict) else "]"))
                piece = prefix + ("{" if isinstance(child, dict) else "[")
            elif isinstance(child, Unreadable):
                piece = prefix + child.excerpt
            else:
                piece = prefix + _scalar(child, limit)
        out.append(piece)
        size += len(piece)
    return clip("".join(out), limit)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A value whose JSON text orjson refused, in place of that value (made by ``salvage``).

    ``fields`` holds the object's top-level members that parse as scalars
    (its ``id`` and ``accountId``, usually), so its key can still be named.
    """

    excerpt: str
    reason: str
    fields: dict[str, Any] = field(default_factory=dict)


def _scalars(entity: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entity.items() if type(value) is not dict and type(value) is not list}


@dataclass(frozen=True, slots=True)
class Refusal:
    """One entity the codec refused: what it was, why, and what of it can be kept."""

    entity_type: str
    #: The props ``eventType``; ``Snapshot`` for a snapshot entity, ``Event`` for a whole event.
    event_type: str
    reason: str
    #: The entity as received when a sink can store it inside the record, else None.
    entity: Any
    #: Its top-level scalar members when the entity itself cannot be kept (too deep, unreadable).
    fields: dict[str, Any] | None
    excerpt: str

    @property
    def id(self) -> int | None:
        """The entity's id when it is one a sink can store (the key is then a real key)."""
        ident = self.owner.get("id")
        return ident if fits(ident) else None

    @property
    def owner(self) -> dict[str, Any]:
        """The members the account attribution reads (the entity, or its scalar fields)."""
        if type(self.entity) is dict:
            return self.entity
        return self.fields or {}

    @property
    def key(self) -> str:
        """``type id`` for log lines, clipped: the id as received (it may be the bad part)."""
        ident = self.owner.get("id") if self.owner else None
        return clip(f"{self.entity_type} {render(ident, 40)}", 100)

    def account_id(self) -> int | None:
        """The account the entity names itself, when it is storable (the mirror adds the parent's)."""
        owner = self.owner
        account = owner.get("id") if self.entity_type in ACCOUNT_KEYED_TYPES else owner.get("accountId")
        return account if fits(account) else None

    @property
    def kind(self) -> str:
        """What its log lines are limited by (``ratelimit``): type and reason."""
        return f"rejected {clip(self.entity_type, 60)}: {self.reason}"

    def describe(self) -> dict[str, str]:
        """The fields of its log line, all short."""
        return {"key": self.key, "reason": self.reason, "event_type": clip(self.event_type, 40),
                "excerpt": self.excerpt}

    def record(self) -> dict[str, Any]:
        """The rejected change's data: reason, excerpt, and the entity (or only its scalar fields)."""
        data: dict[str, Any] = {"reason": self.reason, "excerpt": self.excerpt}
        if self.entity is not None or self.fields is None:
            data["entity"] = self.entity
        else:
            data["fields"] = self.fields
        return data


def refuse(entity_type: str, event_type: str, entity: object, reason: str) -> Refusal:
    """A :class:`Refusal` of ``entity``, keeping it whole only when a sink can store it inside the record."""
    if isinstance(entity, Unreadable):
        return Refusal(entity_type, event_type, entity.reason, None, dict(entity.fields), entity.excerpt)
    excerpt = render(entity)
    # The record wraps the entity one level deeper than a change does.
    if too_deep(entity, MAX_DEPTH - 1):
        fields = _scalars(entity) if type(entity) is dict else {}
        return Refusal(entity_type, event_type, reason, None, fields, excerpt)
    return Refusal(entity_type, event_type, reason, entity, None, excerpt)


def held(refused: Iterable[Refusal], get: Callable[[tuple[str, int]], Any],
         snapshot: Mapping[tuple[str, int], Any]) -> dict[tuple[str, int], Any]:
    """The stored versions a snapshot keeps for the entities it refused: refused is not deleted.

    Only refused snapshot entities with a storable id count, whose key the
    snapshot lacks and ``get`` (the mirror) holds: the sink keeps what it
    had, as it does when a live update is refused.
    """
    kept = {}
    for refusal in refused:
        ident = refusal.id
        if refusal.event_type == SNAPSHOT and ident is not None:
            key = (refusal.entity_type, ident)
            if key not in snapshot and (current := get(key)) is not None:
                kept[key] = current
    return kept
