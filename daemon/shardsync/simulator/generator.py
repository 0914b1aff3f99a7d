"""Deterministic, seeded source of realistic account activity over a :class:`Truth`.

Each step is one business event (new order, fill, cancel, cash movement, risk
flag, deletion of an old order or flat position) and returns every entity
change it caused, in the order a client would plausibly see them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from shardsync.change import Entity
from shardsync.simulator.truth import Mutation, Truth

_PRODUCTS = (  # name, tick size, value per point, typical price
    ("ES", 0.25, 50.0, 5400.0),
    ("NQ", 0.25, 20.0, 19000.0),
    ("CL", 0.01, 1000.0, 78.0),
    ("GC", 0.1, 100.0, 2350.0),
)
_MAX_ORDERS_PER_ACCOUNT = 12


def iso(ts: float) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as Tradovate writes timestamps."""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def trade_date(ts: float) -> dict[str, int]:
    moment = datetime.fromtimestamp(ts, UTC)
    return {"year": moment.year, "month": moment.month, "day": moment.day}


class Generator:
    """Mutates ``truth`` in seeded steps; the same seed and call sequence give the same entities."""

    def __init__(self, truth: Truth, seed: int, clock: Callable[[], float] = time.time) -> None:
        self.truth = truth
        self.rng = random.Random(seed)
        self.clock = clock
        self._contracts: list[tuple[int, float, float]] = []  # id, tick, price

    # -- initial state ---------------------------------------------------------
    def populate(self, users: int, accounts: int) -> list[Mutation]:
        changes = self._reference_data()
        now = self.clock()
        user_ids = []
        for n in range(users):
            uid = self.truth.next_id("user")
            user_ids.append(uid)
            changes.append(self.truth.upsert("user", {
                "id": uid, "name": f"trader{n + 1}", "email": f"trader{n + 1}@example.test", "status": "Active",
                "professional": False, "organizationId": 7, "timestamp": iso(now),
            }))  # fmt: skip
        for n in range(accounts):
            changes += self._new_account(user_ids[n % len(user_ids)], n)
        for account_id in list(self.truth.entities["account"]):
            for _ in range(2):
                changes += self._new_order(account_id)
            changes += self._fill_order(account_id)
        return changes

    def _reference_data(self) -> list[Mutation]:
        t = self.truth
        now = self.clock()
        currency_id = t.next_id("currency")
        exchange_id = t.next_id("exchange")
        group_id = t.next_id("contractGroup")
        changes = [
            t.upsert("currency", {"id": currency_id, "name": "USD", "symbol": "$"}),
            t.upsert("exchange", {"id": exchange_id, "name": "CME"}),
            t.upsert("contractGroup", {"id": group_id, "name": "Futures"}),
        ]
        for name, tick, value, price in _PRODUCTS:
            product_id = t.next_id("product")
            maturity_id = t.next_id("contractMaturity")
            contract_id = t.next_id("contract")
            changes.append(t.upsert("product", {
                "id": product_id, "name": name, "exchangeId": exchange_id, "contractGroupId": group_id,
                "currencyId": currency_id, "productType": "Futures", "valuePerPoint": value, "tickSize": tick,
                "priceFormat": -2, "priceFormatType": "Decimal", "status": "Verified",
            }))  # fmt: skip
            changes.append(t.upsert("contractMaturity", {
                "id": maturity_id, "productId": product_id, "expirationMonth": 202612,
                "expirationDate": "2026-12-18T14:30:00.000Z", "isFront": True,
            }))  # fmt: skip
            changes.append(t.upsert("contract", {
                "id": contract_id, "name": f"{name}Z6", "contractMaturityId": maturity_id, "timestamp": iso(now),
            }))  # fmt: skip
            self._contracts.append((contract_id, tick, price))
        return changes

    def _new_account(self, user_id: int, n: int) -> list[Mutation]:
        t = self.truth
        now = self.clock()
        account_id = t.next_id("account")
        currency_id = next(iter(t.entities["currency"]))
        balance = float(self.rng.choice((25_000, 50_000, 100_000, 150_000)))
        return [
            t.upsert("account", {
                "id": account_id, "name": f"SIM{account_id}", "userId": user_id, "accountType": "Customer",
                "active": True, "clearingHouseId": 2, "riskCategoryId": 2, "autoLiqProfileId": 2,
                "marginAccountType": "Speculator", "legalStatus": "Individual", "timestamp": iso(now),
                "archived": False,
            }),
            t.upsert("accountRiskStatus", {
                "id": account_id, "adminAction": "Normal", "liquidateOnly": None, "userTriggeredLiqOnly": False,
                "maxNetLiq": balance, "minNetLiq": balance,
            }),
            t.upsert("userAccountAutoLiq", {
                "id": account_id, "dailyLossAutoLiq": 1000.0, "changesLocked": False, "doNotUnlock": False,
            }),
            t.upsert("cashBalance", {
                "id": t.next_id("cashBalance"), "accountId": account_id, "currencyId": currency_id,
                "timestamp": iso(now), "tradeDate": trade_date(now), "amount": balance, "realizedPnL": 0.0,
                "weekRealizedPnL": 0.0, "amountSOD": balance,
            }),
        ]  # fmt: skip

    # -- steps -----------------------------------------------------------------
    def step(self, accounts: Sequence[int] | None = None, allow_delete: bool = True) -> list[Mutation]:
        """One business event on a random account (of ``accounts`` when given)."""
        pool = list(accounts) if accounts is not None else list(self.truth.entities["account"])
        if not pool:
            return []
        account_id = self.rng.choice(pool)
        roll = self.rng.random()
        if allow_delete and self._too_many_orders(account_id):
            # Keeps a long-running demo's truth bounded.
            return self.delete(account_id) or self._cash_move(account_id)
        if roll < 0.25:
            return self._new_order(account_id)
        if roll < 0.50:
            return self._fill_order(account_id) or self._new_order(account_id)
        if roll < 0.62:
            return self._cancel_order(account_id) or self._new_order(account_id)
        if roll < 0.80:
            return self._cash_move(account_id)
        if roll < 0.88:
            return self._risk_flag(account_id)
        if allow_delete:
            return self.delete(account_id) or self._new_order(account_id)
        return self._new_order(account_id)

    def delete(self, account_id: int) -> list[Mutation]:
        """Delete a finished order (with its children) or else a flat position; [] if nothing qualifies."""
        finished = [o for o in self._orders_of(account_id) if o["ordStatus"] != "Working"]
        if finished:
            return self._delete_order(self.rng.choice(finished)["id"])
        flat = [p for p in self.truth.of_type("position") if p["accountId"] == account_id and p["netPos"] == 0]
        if flat:
            return self._delete_position(self.rng.choice(flat)["id"])
        return []

    def inflate(self, accounts: Sequence[int], count: int, text_bytes: int) -> list[Mutation]:
        """Add ``count`` padded orderVersions (each with a working order) to make snapshots large."""
        changes: list[Mutation] = []
        padding = "x" * text_bytes
        for _ in range(count):
            new = self._new_order(self.rng.choice(list(accounts)))
            version = next(c for c in new if c.entity_type == "orderVersion")
            padded = dict(version.entity, text=padding)
            changes += [c for c in new if c is not version]
            changes.append(self.truth.upsert("orderVersion", padded))
        return changes

    # -- business events --------------------------------------------------------
    def _orders_of(self, account_id: int) -> list[Entity]:
        return [o for o in self.truth.of_type("order") if o["accountId"] == account_id]

    def _working_order(self, account_id: int) -> Entity | None:
        """A random working order of the account, if it has any."""
        working = [o for o in self._orders_of(account_id) if o["ordStatus"] == "Working"]
        return self.rng.choice(working) if working else None

    def _too_many_orders(self, account_id: int) -> bool:
        return len(self._orders_of(account_id)) >= _MAX_ORDERS_PER_ACCOUNT

    def _new_order(self, account_id: int) -> list[Mutation]:
        t = self.truth
        now = self.clock()
        contract_id, tick, price = self.rng.choice(self._contracts)
        order_id = t.next_id("order")
        command_id = t.next_id("command")
        limit = round(price + tick * self.rng.randint(-40, 40), 6)
        return [
            t.upsert("order", {
                "id": order_id, "accountId": account_id, "contractId": contract_id, "timestamp": iso(now),
                "action": self.rng.choice(("Buy", "Sell")), "ordStatus": "Working", "admin": False,
                "executionProviderId": 1,
            }),
            t.upsert("orderVersion", {
                "id": t.next_id("orderVersion"), "orderId": order_id, "orderQty": self.rng.randint(1, 5),
                "orderType": "Limit", "price": limit, "timeInForce": "Day",
            }),
            t.upsert("command", {
                "id": command_id, "orderId": order_id, "timestamp": iso(now), "clOrdId": f"cl-{order_id}",
                "commandType": "New", "commandStatus": "ExecutionStopped", "isAutomated": True,
            }),
            t.upsert("commandReport", {
                "id": t.next_id("commandReport"), "commandId": command_id, "timestamp": iso(now),
                "commandStatus": "ExecutionStopped", "ordStatus": "Working",
            }),
        ]  # fmt: skip

    def _fill_order(self, account_id: int) -> list[Mutation]:
        order = self._working_order(account_id)
        if order is None:
            return []
        t = self.truth
        now = self.clock()
        version = next((v for v in t.of_type("orderVersion") if v["orderId"] == order["id"]), None)
        qty = int(version["orderQty"]) if version else 1
        price = float(version["price"]) if version else 0.0
        fill_id = t.next_id("fill")
        changes = [
            t.upsert("order", dict(order, ordStatus="Filled", timestamp=iso(now))),
            t.upsert("fill", {
                "id": fill_id, "orderId": order["id"], "contractId": order["contractId"], "timestamp": iso(now),
                "tradeDate": trade_date(now), "action": order["action"], "qty": qty, "price": price,
                "active": True, "finallyPaired": 0,
            }),
        ]  # fmt: skip
        signed = qty if order["action"] == "Buy" else -qty
        position = next((p for p in t.of_type("position")
                         if p["accountId"] == account_id and p["contractId"] == order["contractId"]), None)
        if position is None:
            position = {
                "id": t.next_id("position"), "accountId": account_id, "contractId": order["contractId"],
                "timestamp": iso(now), "tradeDate": trade_date(now), "netPos": 0, "netPrice": price,
                "bought": 0, "boughtValue": 0.0, "sold": 0, "soldValue": 0.0, "prevPos": 0, "prevPrice": None,
            }  # fmt: skip
        closing = position["netPos"] != 0 and (position["netPos"] > 0) != (signed > 0)
        side = "bought" if signed > 0 else "sold"
        updated = dict(position, netPos=position["netPos"] + signed, timestamp=iso(now), netPrice=price)
        updated[side] = position[side] + qty
        updated[side + "Value"] = round(position[side + "Value"] + qty * price, 6)
        changes.append(t.upsert("position", updated))
        if closing:
            pair_qty = min(qty, abs(position["netPos"]))
            changes.append(t.upsert("fillPair", {
                "id": t.next_id("fillPair"), "positionId": position["id"],
                "buyFillId": fill_id if signed > 0 else fill_id - 1,
                "sellFillId": fill_id if signed < 0 else fill_id - 1,
                "qty": pair_qty, "buyPrice": price, "sellPrice": position["netPrice"], "active": True,
            }))  # fmt: skip
            changes += self._cash_move(account_id, pnl=round(self.rng.uniform(-500, 500), 2))
        return changes

    def _cancel_order(self, account_id: int) -> list[Mutation]:
        order = self._working_order(account_id)
        if order is None:
            return []
        t = self.truth
        now = self.clock()
        command_id = t.next_id("command")
        return [
            t.upsert("command", {
                "id": command_id, "orderId": order["id"], "timestamp": iso(now), "commandType": "Cancel",
                "commandStatus": "ExecutionStopped", "isAutomated": True,
            }),
            t.upsert("commandReport", {
                "id": t.next_id("commandReport"), "commandId": command_id, "timestamp": iso(now),
                "commandStatus": "ExecutionStopped", "ordStatus": "Canceled",
            }),
            t.upsert("order", dict(order, ordStatus="Canceled", timestamp=iso(now))),
        ]  # fmt: skip

    def _cash_move(self, account_id: int, pnl: float | None = None) -> list[Mutation]:
        balance = next((c for c in self.truth.of_type("cashBalance") if c["accountId"] == account_id), None)
        if balance is None:
            return []
        delta = pnl if pnl is not None else round(self.rng.uniform(-250, 250), 2)
        now = self.clock()
        return [self.truth.upsert("cashBalance", dict(
            balance, amount=round(balance["amount"] + delta, 2), realizedPnL=round(balance["realizedPnL"] + delta, 2),
            weekRealizedPnL=round(balance["weekRealizedPnL"] + delta, 2), timestamp=iso(now),
        ))]  # fmt: skip

    def _risk_flag(self, account_id: int) -> list[Mutation]:
        status = self.truth.get("accountRiskStatus", account_id)
        if status is None:
            return []
        flipped = dict(status, userTriggeredLiqOnly=not status["userTriggeredLiqOnly"])
        return [self.truth.upsert("accountRiskStatus", flipped)]

    def _delete_order(self, order_id: int) -> list[Mutation]:
        t = self.truth
        # Children first so each deletion still resolves its owner (and so its shard).
        commands = [c["id"] for c in t.of_type("command") if c["orderId"] == order_id]
        doomed: list[tuple[str, int]] = [
            ("commandReport", r["id"]) for r in t.of_type("commandReport") if r["commandId"] in commands
        ]
        doomed += [("command", c) for c in commands]
        doomed += [("orderVersion", v["id"]) for v in t.of_type("orderVersion") if v["orderId"] == order_id]
        doomed += [("fill", f["id"]) for f in t.of_type("fill") if f["orderId"] == order_id]
        doomed.append(("order", order_id))
        return [c for c in (t.delete(kind, i) for kind, i in doomed) if c is not None]

    def _delete_position(self, position_id: int) -> list[Mutation]:
        t = self.truth
        doomed = [("fillPair", p["id"]) for p in t.of_type("fillPair") if p["positionId"] == position_id]
        doomed.append(("position", position_id))
        return [c for c in (t.delete(kind, i) for kind, i in doomed) if c is not None]
