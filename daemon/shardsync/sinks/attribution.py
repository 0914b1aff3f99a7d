"""Upgrade-time attribution of stored entities that carry no accountId (fills through their order)."""

from __future__ import annotations

from shardsync.change import ACCOUNT_VIA


def _depth(entity_type: str) -> int:
    depth = 0
    while entity_type in ACCOUNT_VIA and depth < len(ACCOUNT_VIA):
        entity_type, depth = ACCOUNT_VIA[entity_type][1], depth + 1
    return depth


#: ACCOUNT_VIA's child types, each after its parent (command before commandReport, fill before fillFee).
PARENTS_FIRST: tuple[str, ...] = tuple(sorted(ACCOUNT_VIA, key=_depth))


def backfill_statements(json_field: str, scope: str = "") -> list[str]:
    """UPDATEs giving stored children their parent's ``account_id`` where it is still NULL.

    ``json_field`` renders the parent-id field of ``entities.data`` for the
    dialect, given the field name (``json_extract(entities.data, '$.orderId')``
    or ``(entities.data->>'orderId')::bigint``); ``scope`` adds conditions on
    the parent row (the same shard in PostgreSQL).  Only the entities table
    is touched: it is bounded by the shard's current state, whereas the log
    can be very long, so its old rows keep NULL until retention removes them.
    """
    statements = []
    for child in PARENTS_FIRST:
        link, parent = ACCOUNT_VIA[child]
        statements.append(
            "UPDATE entities SET account_id = (SELECT p.account_id FROM entities AS p "  # noqa: S608 - constants
            f"WHERE p.entity_type = '{parent}' AND p.id = {json_field.format(link)}{scope}) "
            f"WHERE entity_type = '{child}' AND account_id IS NULL"
        )
    return statements
