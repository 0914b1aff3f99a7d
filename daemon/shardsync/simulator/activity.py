"""Knobs that change the truth or what is sent: generated changes, mutations, odd frames, poison.

Mixed into :class:`~shardsync.simulator.server.SimServer` like :mod:`.faults` and
reachable the same ways (``POST /admin/<knob>``, ``Simulator.<knob>(...)``):

* ``pause``/``resume`` the generator; ``step(count)`` runs generator steps now.
* ``mutate(count, remainder, divisor, expression, deletions)``: changes to one shard.
* ``inflate(count, text_bytes, ...)``: padded orders so the next snapshot is large.
* ``grow(orders, text_bytes, ...)``, ``churn(updates, deletions, creations, ...)``: the same in bulk
  for million-entity shards, and a share of such a shard changed at once (:mod:`.bulk`).
* ``malformed(kind, ...)``: one broken frame (``truncated``, ``not_array``, ``bad_utf8``,
  ``unknown_letter``) or a ``huge`` valid one of ``size_mib``.
* ``replay(count, ...)``: the last live props of each socket sent again.
* ``event`` (``system_event``): ``{"e": name, "d": data}`` whatever the entityTypes.
* ``poison(kind, remainder, divisor, in_snapshot, expression)`` and ``cure()``: see :mod:`.poison`.
* ``blank_snapshot(count, remainder, divisor)``: the next ``count`` snapshots of that shard carry no
  entity at all (every collection empty), though the truth is unchanged: a server's bad answer.
* ``purge(entity_types, remainder, divisor, expression)``: delete every entity of those types the
  shard holds (published live to open sockets): a real mass deletion.
* ``touch_users(count)``: user-level changes, which reach every shard (the chaos campaign's stream).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from shardsync.simulator import bulk
from shardsync.simulator import poison as poisons
from shardsync.simulator.faults import select_sessions
from shardsync.simulator.generator import Generator, iso
from shardsync.simulator.options import EXPRESSIONS, SimOptions
from shardsync.simulator.session import WsSession
from shardsync.simulator.truth import PLURALS, Mutation, Scope, Shard, Truth

MALFORMED_KINDS = ("truncated", "not_array", "bad_utf8", "unknown_letter", "huge")
_FIXED_MALFORMED = {
    "truncated": b'a[{"s":',
    "not_array": b"a{}",
    "bad_utf8": b'a[{"e":"props","d":"\xff\xfe\xfd"}]',
    "unknown_letter": b"x",
}


def shard_scope(remainder: int | None, divisor: int = 1, expression: str = "modAccountId",
                entity_types: list[str] | None = None) -> Scope:
    """The scope of one shard (``remainder`` None = the whole truth)."""
    if expression not in EXPRESSIONS:
        raise ValueError(f"expression must be one of {', '.join(EXPRESSIONS)}")
    if remainder is not None and not 0 <= remainder < divisor:
        raise ValueError("remainder must satisfy 0 <= remainder < divisor")
    shard = Shard(expression, divisor, remainder) if remainder is not None else None
    return Scope(shard, None, None, frozenset(entity_types) if entity_types is not None else None)


class Activity:
    """Mixed into SimServer; these attributes are the server's."""

    options: SimOptions
    truth: Truth
    generator: Generator
    sessions: dict[int, WsSession]
    paused: bool
    poisoned: list[poisons.Poison]
    #: Blank snapshots still to send, by (remainder, divisor); None matches any.
    blank_left: dict[tuple[int | None, int | None], int]

    # -- fan-out ------------------------------------------------------------------------
    def publish(self, changes: list[Mutation]) -> None:
        for session in list(self.sessions.values()):
            if session.scope is None or session.closed:
                continue
            for change in changes:
                if self.truth.wants(change, session.scope):
                    session.deliver(change)

    def generate_for(self, scope: Scope, count: int) -> list[Mutation]:
        accounts = self.truth.accounts_in(scope)
        changes: list[Mutation] = []
        for _ in range(count if accounts else 0):
            step = self.generator.step(accounts)
            self.publish(step)
            changes += step
        return changes

    # -- the generator ------------------------------------------------------------------
    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def step(self, count: int = 1) -> list[Mutation]:
        """Run ``count`` generator steps now (tests that want changes without waiting for the rate)."""
        changes: list[Mutation] = []
        for _ in range(count):
            step = self.generator.step()
            self.publish(step)
            changes += step
        # Framed before the admin reply goes out: a caller (bench/throughput.py)
        # that then lets a reader go measures the reader, not this encoding.
        for session in list(self.sessions.values()):
            session.flush_pending()
        return changes

    def _accounts(self, remainder: int | None, divisor: int, expression: str) -> list[int]:
        accounts = self.truth.accounts_in(shard_scope(remainder, divisor, expression))
        if not accounts:
            raise ValueError("that shard owns no accounts")
        return accounts

    def mutate(self, count: int = 5, remainder: int | None = None, divisor: int = 1,
               expression: str = "modAccountId", deletions: int = 1) -> list[Mutation]:
        """Apply ``count`` changes to one shard's accounts, ``deletions`` of them deletions; returns them."""
        accounts = self._accounts(remainder, divisor, expression)
        changes: list[Mutation] = []
        for _ in range(min(deletions, count)):
            for account_id in self.generator.rng.sample(accounts, len(accounts)):
                deleted = self.generator.delete(account_id)
                if deleted:
                    changes += deleted
                    break
        for _ in range(count - min(deletions, count)):
            changes += self.generator.step(accounts, allow_delete=False)
        self.publish(changes)
        return changes

    def inflate(self, count: int, text_bytes: int = 200, remainder: int | None = None, divisor: int = 1,
                expression: str = "modAccountId") -> int:
        """Add ``count`` padded orders to one shard so its next snapshot is large; returns changes made."""
        changes = self.generator.inflate(self._accounts(remainder, divisor, expression), count, text_bytes)
        self.publish(changes)
        return len(changes)

    def touch_users(self, count: int = 1) -> list[Mutation]:
        """Update ``count`` random users (a fresh ``timestamp``); user-level entities reach every shard under
        ``reference_routing=all`` (remainder 0 only under ``zero``)."""
        if count < 1:
            raise ValueError("count must be >= 1")
        users = sorted(self.truth.entities["user"])
        changes = []
        for _ in range(count):
            user = self.truth.entities["user"][self.generator.rng.choice(users)]
            changes.append(self.truth.upsert("user", {**user, "timestamp": iso(self.generator.clock())}))
        self.publish(changes)
        return changes

    def grow(self, orders: int, text_bytes: int = 0, remainder: int | None = None, divisor: int = 1,
             expression: str = "modAccountId") -> int:
        """Add ``orders`` working orders (4 entities each) to one shard at once, sent to nobody live
        (:mod:`.bulk`: a 1M-entity snapshot in seconds); returns the entities added."""
        accounts = self._accounts(remainder, divisor, expression)
        return bulk.grow(self.truth, accounts, orders, now=time.time(), text_bytes=text_bytes)

    def churn(self, updates: int, *, deletions: int = 0, creations: int = 0, remainder: int | None = None,
              divisor: int = 1, expression: str = "modAccountId") -> dict[str, Any]:
        """Change one shard's orders in bulk (:func:`.bulk.churn`) and publish it; returns the counts."""
        accounts = self._accounts(remainder, divisor, expression)
        changes = bulk.churn(self.truth, accounts, self.generator.rng, now=time.time(), updates=updates,
                             deletions=deletions, creations=creations)
        self.publish(changes)
        return bulk.describe(changes)

    # -- odd frames -------------------------------------------------------------------
    def malformed(self, kind: str, remainder: int | None = None, divisor: int | None = None,
                  size_mib: float = 1.0) -> int:
        """Send one broken frame: truncated JSON, ``a{}``, bad UTF-8, unknown letter, or a huge valid frame."""
        if kind not in MALFORMED_KINDS:
            raise ValueError(f"kind must be one of {', '.join(MALFORMED_KINDS)}")
        sessions = select_sessions(self.sessions.values(), remainder, divisor)
        for session in sessions:
            session.flush_pending()
            session.send_raw(_FIXED_MALFORMED[kind] if kind != "huge" else self._huge_frame(session, size_mib))
        return len(sessions)

    def _huge_frame(self, session: WsSession, size_mib: float) -> bytes:
        """A valid frame of at least ``size_mib`` MiB: the shard's current entities re-sent as Updated."""
        target = int(size_mib * 1024 * 1024)
        scope = session.scope or Scope()
        rows = list(self.truth.select(scope).items()) or [(("currency", 0), {"id": 0})]
        parts: list[bytes] = []
        size = 0
        while size < target:
            for (entity_type, _), entity in rows:
                part = orjson.dumps({"e": "props", "d": {"entityType": entity_type, "eventType": "Updated",
                                                         "entity": entity}})
                parts.append(part)
                size += len(part) + 1
                if size >= target:
                    break
        return b"a[" + b",".join(parts) + b"]"

    def replay(self, count: int = 100, remainder: int | None = None, divisor: int | None = None) -> int:
        """Send the last ``count`` live props of each socket again (the reported re-delivery of
        a session's events); returns how many messages were re-sent."""
        if count < 1:
            raise ValueError("count must be >= 1")
        sent = 0
        for session in select_sessions(self.sessions.values(), remainder, divisor):
            for message in list(session.sent_props)[-count:]:
                session.enqueue(message)
                sent += 1
        return sent

    def system_event(self, name: str = "OtherEnvAdminAlertSignal", data: Any = None,
                     remainder: int | None = None, divisor: int | None = None) -> int:
        """Send ``{"e": name, "d": data}`` to synced sockets, whatever their entityTypes."""
        payload = data if data is not None else {"id": 1, "text": "Admin alert", "timestamp": "now"}
        sessions = [s for s in select_sessions(self.sessions.values(), remainder, divisor) if s.scope is not None]
        for session in sessions:
            session.enqueue({"e": name, "d": payload})
        return len(sessions)

    # -- mass deletions, false and real -------------------------------------------------
    def blank_snapshot(self, count: int = 1, remainder: int | None = None, divisor: int | None = None) -> None:
        """The next ``count`` snapshots of that shard (``remainder`` None: of any socket) are empty."""
        if count < 0:
            raise ValueError("count must be >= 0")
        self.blank_left[(remainder, divisor)] = count

    def take_blank(self, scope: Scope) -> bool:
        """Whether the snapshot about to be sent for ``scope`` is to be blank (uses one up)."""
        shard = scope.shard
        candidates: list[tuple[int | None, int | None]] = [(None, None)]
        if shard is not None:
            candidates += [(shard.remainder, None), (shard.remainder, shard.divisor)]
        for key in candidates:
            if self.blank_left.get(key, 0) > 0:
                self.blank_left[key] -= 1
                return True
        return False

    def purge(self, entity_types: list[str], remainder: int | None = None, divisor: int = 1,
              expression: str = "modAccountId") -> list[Mutation]:
        """Delete every entity of ``entity_types`` that shard holds, published live; returns the deletions."""
        truth = self.truth
        keys = list(truth.select(shard_scope(remainder, divisor, expression, entity_types)))
        changes = [change for entity_type, ident in keys if (change := truth.delete(entity_type, ident)) is not None]
        self.publish(changes)
        return changes

    # -- poison -----------------------------------------------------------------------
    def poison(self, kind: str, remainder: int | None = None, divisor: int = 1, in_snapshot: bool = True,
               expression: str = "modAccountId") -> dict[str, Any]:
        """One entity a correct client must quarantine, in the shard's later snapshots or sent live now."""
        account_id = self.generator.rng.choice(self._accounts(remainder, divisor, expression))
        user_id = self.truth.owner("account", account_id)[1]
        contract_id = next(iter(self.truth.entities["contract"]), 0)
        bad = poisons.make(kind, fresh_id=self.truth.next_id("order"), serial=len(self.poisoned) + 1,
                           account_id=account_id, user_id=user_id, contract_id=contract_id)
        if in_snapshot:
            self.poisoned.append(bad)
        else:
            self.publish([Mutation("order", "Created", bad.entity, account_id, user_id)])
        return bad.describe()

    def cure(self) -> int:
        """Take every poison entity out of later snapshots; returns how many there were."""
        count = len(self.poisoned)
        self.poisoned.clear()
        return count

    def poisoned_for(self, scope: Scope) -> list[tuple[str, dict[str, Any]]]:
        if scope.entity_types is not None and "order" not in scope.entity_types:
            return []
        return [(PLURALS["order"], p.entity) for p in self.poisoned
                if self.truth.routes_to("order", p.account_id, p.user_id, scope)]
