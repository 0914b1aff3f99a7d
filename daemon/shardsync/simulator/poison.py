"""Poison entities: one order a correct client cannot store and must quarantine.

* ``deep``: a valid order whose ``text`` nests arrays 2000 deep. orjson refuses to
  write more than 255 levels, so the nesting is pre-encoded by hand and carried as an
  :class:`orjson.Fragment` that is copied into the frame verbatim.
* ``bigid``: an order with ``id`` 2**63, one past the signed 64-bit range.
* ``badtype``: an order whose ``id`` is a string.

Each has a real ``accountId`` of the chosen shard, so it routes like any order.
Poison never enters :class:`~shardsync.simulator.truth.Truth`: ``truth_of``,
``/admin/truth``, ``history`` and the generator do not see it, because it is not
part of what a correct client must hold. The server keeps it beside the truth
and adds it to every later snapshot of its shard (``in_snapshot``) until ``cure``,
or sends it once as a live ``Created`` props.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

KINDS = ("deep", "bigid", "badtype")
DEPTH = 2000


@dataclass(frozen=True)
class Poison:
    kind: str
    entity: dict[str, Any]
    account_id: int
    user_id: int | None

    def describe(self) -> dict[str, Any]:
        """What a caller (and a test) needs to recognise it: kind, entityType, id, accountId."""
        return {"kind": self.kind, "entityType": "order", "id": self.entity["id"], "accountId": self.account_id}


def make(kind: str, *, fresh_id: int, serial: int, account_id: int, user_id: int | None,
         contract_id: int) -> Poison:
    """A poison order of ``kind`` for ``account_id`` (``fresh_id``: an unused order id for ``deep``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    entity: dict[str, Any] = {"id": fresh_id, "accountId": account_id, "contractId": contract_id,
                              "action": "Buy", "ordStatus": "Working", "admin": False}
    if kind == "deep":
        entity["text"] = orjson.Fragment(b"[" * DEPTH + b"]" * DEPTH)
    elif kind == "bigid":
        entity["id"] = 2**63
    else:
        entity["id"] = f"poison-{serial}"
    return Poison(kind, entity, account_id, user_id)
