"""Big truths fast: ``grow`` adds working orders by the hundred thousand, ``churn`` changes a share of them.

The generator's steps look at the account's whole book (its orders, positions)
to stay plausible, which is quadratic once a shard holds a million entities;
``bench/scale.py`` needs 1M-entity shards and a 1 % resync of them.  Here each
order costs its four entities and nothing more: ``order`` (working),
``orderVersion`` (padded with ``text_bytes`` of text when asked),
``command`` and ``commandReport``, dealt round-robin over the given accounts,
one timestamp for the whole call.  ``grow`` sends nothing live (the next
snapshot carries the orders); ``churn``'s changes are published like any
other mutation.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Sequence
from typing import Any

from shardsync.simulator.generator import iso
from shardsync.simulator.truth import Mutation, Truth

#: Entities one grown order brings: order, orderVersion, command, commandReport.
ENTITIES_PER_ORDER = 4


def grow(truth: Truth, accounts: Sequence[int], orders: int, *, now: float, text_bytes: int = 0) -> int:
    """Add ``orders`` working orders (4 entities each) to ``accounts``' books; returns the entities added."""
    if orders < 0 or text_bytes < 0:
        raise ValueError("orders and text_bytes must be >= 0")
    # Only acyclic dicts are made here; the collector would rescan the growing
    # truth again and again and roughly double the time.
    enabled = gc.isenabled()
    gc.disable()
    try:
        _add_orders(truth, accounts, orders, now=now, text_bytes=text_bytes)
    finally:
        if enabled:
            gc.enable()
    # The grown truth lives as long as the server: kept out of later collections,
    # which would otherwise walk it on every snapshot.
    gc.freeze()
    return orders * ENTITIES_PER_ORDER


def _add_orders(truth: Truth, accounts: Sequence[int], orders: int, *, now: float, text_bytes: int = 0,
                record: bool = False) -> list[Mutation]:
    """Add the orders; their Created mutations when ``record`` (a million of them would be garbage)."""
    if not accounts:
        raise ValueError("no accounts to grow")
    contract = next(iter(truth.entities["contract"]), 0)
    stamp = iso(now)
    padding = {"text": "x" * text_bytes} if text_bytes else {}
    add = truth.add_unpublished
    user_of = {account: truth.owner("account", account)[1] for account in accounts}
    added: list[Mutation] = []
    for n in range(orders):
        account = accounts[n % len(accounts)]
        user = user_of[account]
        order_id, command_id = truth.next_id("order"), truth.next_id("command")
        entities = (
            ("order", {
                "id": order_id, "accountId": account, "contractId": contract, "timestamp": stamp,
                "action": "Buy" if n % 2 else "Sell", "ordStatus": "Working", "admin": False,
                "executionProviderId": 1,
            }),
            ("orderVersion", {
                "id": truth.next_id("orderVersion"), "orderId": order_id, "orderQty": 1 + n % 5,
                "orderType": "Limit", "price": 5400.0 + (n % 80) * 0.25, "timeInForce": "Day", **padding,
            }),
            ("command", {
                "id": command_id, "orderId": order_id, "timestamp": stamp, "clOrdId": f"cl-{order_id}",
                "commandType": "New", "commandStatus": "ExecutionStopped", "isAutomated": True,
            }),
            ("commandReport", {
                "id": truth.next_id("commandReport"), "commandId": command_id, "timestamp": stamp,
                "commandStatus": "ExecutionStopped", "ordStatus": "Working",
            }),
        )  # fmt: skip
        for entity_type, entity in entities:
            add(entity_type, entity, account, user)
            if record:
                added.append(Mutation(entity_type, "Created", entity, account, user))
    return added


def churn(truth: Truth, accounts: Sequence[int], rng: random.Random, *, now: float, updates: int,
          deletions: int = 0, creations: int = 0) -> list[Mutation]:
    """Change ``accounts``' books: ``updates`` orders flip between Working and Canceled, ``deletions``
    command reports go, ``creations`` new orders (4 entities each) come; returns every mutation."""
    if min(updates, deletions, creations) < 0:
        raise ValueError("updates, deletions and creations must be >= 0")
    owned = frozenset(accounts)
    orders = [o for o in truth.of_type("order") if o["accountId"] in owned]
    order_ids = {o["id"] for o in orders}
    commands = {c["id"] for c in truth.of_type("command") if c["orderId"] in order_ids}
    reports = [r["id"] for r in truth.of_type("commandReport") if r["commandId"] in commands]
    if updates > len(orders) or deletions > len(reports):
        raise ValueError(f"the shard has {len(orders)} orders and {len(reports)} command reports")
    stamp = iso(now)
    changes: list[Mutation] = []
    for order in rng.sample(orders, updates):
        status = "Canceled" if order["ordStatus"] == "Working" else "Working"
        changes.append(truth.upsert("order", dict(order, ordStatus=status, timestamp=stamp)))
    for report_id in rng.sample(reports, deletions):
        deleted = truth.delete("commandReport", report_id)
        if deleted is not None:
            changes.append(deleted)
    changes += _add_orders(truth, accounts, creations, now=now, record=True)
    return changes


def describe(changes: Sequence[Mutation]) -> dict[str, Any]:
    """How many of each event type (the knob's answer: a 10k-change list is no use to a caller)."""
    counts: dict[str, int] = {}
    for change in changes:
        counts[change.event_type] = counts.get(change.event_type, 0) + 1
    return {"changes": len(changes), **counts}
