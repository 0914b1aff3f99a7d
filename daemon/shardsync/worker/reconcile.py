"""A complete snapshot into the sink without a false deletion: the mass-deletion guard, then provisional deletions.

Creates and updates of a snapshot are always true and apply at once.  Its
deletions pass two checks first.  The guard (``guard.py``) holds back a
mass deletion until a second snapshot agrees.  Then, when the snapshot's
end was only inferred by the quiet rule (``snapshot.py``), the deletions
wait ``deletion_grace`` (``provisional.py``): live news of an entity
settles its deletion, and the session ending first drops them all.  The
events buffered during the snapshot are applied after it, through the same
door as live events, so they too settle held deletions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shardsync import quarantine
from shardsync.change import Origin
from shardsync.protocol import PropsEvent, Rejected, SystemEvent
from shardsync.sinks import SinkState
from shardsync.worker.batch import Batch
from shardsync.worker.guard import DeletionGuard, Verdict
from shardsync.worker.provisional import Provisional
from shardsync.worker.snapshot import SnapshotAssembler

Apply = Callable[[PropsEvent | SystemEvent, str], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one reconciliation did."""

    #: Changes the snapshot made now (creates, updates and the deletions applied at once).
    changes: int
    #: Deletions held until the grace ends.
    held: int
    #: The guard holds a mass deletion back: the session must resync to confirm it.
    resync: bool
    verdict: Verdict


class Reconciler:
    """Reconciles snapshots into one shard's batch; keeps the guard's suspects and the held deletions."""

    def __init__(self, batch: Batch, *, ratio: float, grace: float, clock: Callable[[], float], log: Any) -> None:
        self.batch = batch
        self.guard = DeletionGuard(ratio)
        self.held = Provisional()
        self._grace = grace
        self._clock = clock
        self.log = log
        #: How live events are applied: straight to the batch, or first past the held deletions.
        self.apply: Apply = batch.apply

    def reconcile(self, assembler: SnapshotAssembler, received_at: str) -> Outcome:
        """Diff the complete snapshot, apply the buffered events and commit (the batch's freshness says live)."""
        batch = self.batch
        mirror = batch.mirror
        origin: Origin = "resync" if mirror.snapshot_seen else "snapshot"
        snapshot = assembler.entities
        # A refused snapshot entity keeps what the sink holds: refused is not deleted (quarantine.held).
        refused = [refusal for event, _ in assembler.buffered if type(event) is Rejected for refusal in event.refused]
        if kept := quarantine.held(refused, mirror.get, snapshot):
            snapshot = {**snapshot, **kept}
        vanished = mirror.vanished(snapshot)
        entities = len(mirror)
        verdict = self.guard.judge(vanished, entities)
        self._tell(verdict, entities)
        provisional = assembler.inferred
        changes = batch.reconcile(snapshot, received_at=received_at, deleting=[] if provisional else verdict.delete)
        # The mirror holds what it needs now: the snapshot's own table goes before the sink write.
        del snapshot
        assembler.entities = {}
        held = 0
        if provisional and verdict.delete:
            held = len(verdict.delete)
            self.held.hold(verdict.delete, until=self._clock() + self._grace, origin=origin, received_at=received_at)
            self.apply = self._apply_held
            self.log.info("provisional_deletions_held", deletions=held, grace=self._grace, parts=assembler.parts)
        for event, event_received_at in assembler.buffered:
            # A snapshot's own Rejected carries no time of its own: the snapshot's.
            self.apply(event, event_received_at or received_at)
        if verdict.resync:
            # Creates and updates are true whatever the second snapshot says; the shard is not live yet.
            batch.commit()
        else:
            batch.commit(state=SinkState.LIVE, snapshot=True)
        return Outcome(changes, held, verdict.resync, verdict)

    def deadline(self) -> float | None:
        """When the held deletions commit, if any are held."""
        return self.held.deadline()

    def due(self, now: float) -> bool:
        return self.held.due(now)

    def commit_held(self) -> int:
        """The grace is over: the held deletions still standing join the batch; returns how many."""
        held = self.held
        overtaken = held.overtaken
        deleted = self.batch.delete(held.take(), origin=held.origin, received_at=held.received_at)
        self.apply = self.batch.apply
        self.log.info("provisional_deletions_committed", deleted=deleted, overtaken=overtaken)
        return deleted

    def drop(self) -> int:
        """The session ended: forget the held deletions, never committed."""
        self.apply = self.batch.apply
        dropped = self.held.drop()
        if dropped:
            self.log.info("provisional_deletions_dropped", deletions=dropped)
        return dropped

    def _apply_held(self, event: PropsEvent | SystemEvent, received_at: str) -> None:
        held = self.held
        if type(event) is PropsEvent:
            held.touch(event.entity_type, event.entities)
        self.batch.apply(event, received_at)
        if not held:
            self.apply = self.batch.apply
            self.log.info("provisional_deletions_overtaken", overtaken=held.overtaken)

    def _tell(self, verdict: Verdict, entities: int) -> None:
        log = self.log
        if verdict.second_look and verdict.confirmed:
            log.warning("mass_delete_confirmed", confirmed=verdict.confirmed, refused=verdict.refused,
                        entities=entities)
        if verdict.second_look and verdict.refused:
            log.warning("mass_delete_refused", refused=verdict.refused, confirmed=verdict.confirmed,
                        entities=entities)
        if verdict.suspected:
            log.warning("mass_delete_suspected", deletions=verdict.suspected, entities=entities,
                        ratio=self.guard.ratio)
