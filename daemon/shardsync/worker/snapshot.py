"""Assembles the initial snapshot of a sync request, in one or several parts, within its bounds (pure).

The split format of ``splitResponses: true`` is undocumented, so completion is
decided by this rule, first match wins:

1. the request asked for no split: the first successful response is all of it
   (``single``);
2. a same-id part after the first carries an explicit end marker (an empty
   body, or a body with no collection and a true flag such as
   ``{"done": true}``): complete now (``marker``).  An empty or marker-only
   *first* part completes nothing by itself: a server that has not started
   sending is not a server that has nothing to send;
3. otherwise no further same-id part arrived for ``quiet`` seconds after the
   last one: complete, but only inferred (``quiet``).  Props interleaved
   between parts do not extend the wait, because a server streaming live
   events would otherwise postpone it forever.

How it completed decides how its deletions are trusted: after ``single`` or
``marker`` the snapshot is known whole and they apply at once; after
``quiet`` a part may still be on its way, so they are only provisional
(``provisional.py``): held for ``deletion_grace``, cancelled by news of the
entity, dropped if the session ends first.

Props that arrive before completion are buffered and handed back in order,
each with the time it was received, to be applied after the snapshot has been
reconciled.  The entities of a part that the codec refused (quarantine) join
the buffer as one ``Rejected``, with an empty receive time: the batch stamps
them with the snapshot's.  A same-id part arriving
after completion is "late" (:meth:`SnapshotAssembler.on_late`): the quiet
rule fired too early, so the session resyncs with a doubled quiet period.

Bounds: a snapshot is abandoned (:meth:`SnapshotAssembler.exceeded`) when it
has taken longer than ``timeout`` since its syncrequest, when the bytes
received while it is assembled (its parts and the events buffered meanwhile)
pass ``max_bytes``, or when it holds more than ``max_entities`` entities: a
server that never ends a snapshot cannot hold a worker or its memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal

from shardsync import syncmessage
from shardsync.change import Key
from shardsync.entitytext import text_of
from shardsync.protocol import PropsEvent, ProtocolError, Rejected, Response, SystemEvent
from shardsync.quarantine import Refusal

#: The quiet period never grows beyond this (a late part doubles it).
MAX_QUIET: Final = 30.0

#: How a snapshot completed (see the module docstring); only ``quiet`` is inferred.
Completion = Literal["single", "marker", "quiet"]
#: Which bound an abandoned snapshot exceeded (the option that sets it).
Bound = Literal["snapshot_timeout", "max_snapshot_bytes", "max_snapshot_entities"]

_UNBOUNDED: Final = float("inf")


class SyncRejected(Exception):
    """The server refused the sync request (status and text from its response)."""

    def __init__(self, status: int, text: str) -> None:
        self.status = status
        self.text = text
        super().__init__(f"user/syncrequest refused with {status}: {text}")


class SnapshotAssembler:
    """Collects the parts answering request ``request_id`` and decides completion."""

    def __init__(
        self,
        request_id: int,
        *,
        split: bool,
        quiet: float,
        started: float = 0.0,
        timeout: float = _UNBOUNDED,
        max_bytes: float = _UNBOUNDED,
        max_entities: float = _UNBOUNDED,
        held: Callable[[Key], Any] | None = None,
    ) -> None:
        self.request_id = request_id
        self.split = split
        self.quiet = quiet
        #: When its syncrequest went out, and the bounds (see the module docstring).
        self.started = started
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_entities = max_entities
        #: Each entity as its JSON text (``entitytext``): a third of a parsed dict's memory until reconciled;
        #: the very text ``held(key)`` gives (the mirror's) when equal, so an unchanged entity costs no text at all.
        self.entities: dict[Key, Any] = {}
        self._held = held
        #: Events that arrived before completion, in order, each with its receive time.
        self.buffered: list[tuple[PropsEvent | SystemEvent, str]] = []
        self.parts = 0
        self.complete = False
        #: How it completed, once it did.
        self.completion: Completion | None = None
        self._last_part_at: float | None = None

    @property
    def inferred(self) -> bool:
        """Completed by the quiet rule alone: its deletions are provisional."""
        return self.completion == "quiet"

    def on_response(self, response: Response, now: float) -> None:
        """Take one response carrying the sync id; raises SyncRejected when refused."""
        if response.penalty is not None or not 200 <= response.status < 300:
            raise SyncRejected(response.status, response.error_text or "time penalty")
        self.parts += 1
        self._last_part_at = now
        if self.split and syncmessage.is_snapshot_end(response.data):
            if self.parts > 1:
                self._completed("marker")
            return
        if response.data is None:
            raise ProtocolError("sync response without a body", b"")
        refused: list[Refusal] = []
        entities, held = self.entities, self._held
        for entity_type, entity in syncmessage.snapshot_entities(response.data, refused, response.nesting):
            # The codec checked the id (syncmessage.snapshot_entities).
            key = (entity_type, entity["id"])
            text = text_of(entity)
            if text is None:
                entities[key] = entity
            elif held is not None and (known := held(key)) == text:
                entities[key] = known
            else:
                entities[key] = text
        if refused:  # quarantine: kept in the change log with the snapshot
            self.buffered.append((Rejected(refused=tuple(refused)), ""))
        if not self.split:
            self._completed("single")

    def on_late(self, response: Response) -> float | None:
        """A same-id part after completion: the quiet period to resync with, or None when it changes nothing.

        Merging it is not safe: it holds snapshot-time state, possibly older than
        live props applied since (an entity deleted meanwhile would come back).
        The reconciliation already emitted was against a partial snapshot; the
        resync corrects it.  The quiet period doubles (up to ``MAX_QUIET``) so a
        slow server's snapshot completes on the next attempt.  A late end
        marker changes nothing; a late refusal raises SyncRejected.
        """
        if not response.ok:
            raise SyncRejected(response.status, response.error_text)
        if syncmessage.is_snapshot_end(response.data):
            return None
        return min(2 * self.quiet, MAX_QUIET)

    def on_event(self, event: PropsEvent | SystemEvent, received_at: str) -> None:
        """Keep an event that arrived (at ``received_at``) before the snapshot was reconciled."""
        self.buffered.append((event, received_at))

    def deadline(self) -> float | None:
        """When the quiet rule completes the snapshot, if it can."""
        if self.complete or self._last_part_at is None:
            return None
        return self._last_part_at + self.quiet

    def next_due(self) -> float | None:
        """The first of the quiet deadline and the snapshot's time bound, while it is incomplete."""
        if self.complete:
            return None
        quiet = self.deadline()
        bound = self.started + self.timeout
        return bound if quiet is None else min(quiet, bound)

    def check(self, now: float) -> bool:
        """Apply the quiet rule at ``now``; True once the snapshot is complete."""
        deadline = self.deadline()
        if deadline is not None and now >= deadline:
            self._completed("quiet")
        return self.complete

    def exceeded(self, now: float, received_bytes: int) -> Bound | None:
        """The bound an incomplete snapshot has passed at ``now`` with ``received_bytes`` read for it, if any."""
        if self.complete:
            return None
        if len(self.entities) > self.max_entities:
            return "max_snapshot_entities"
        if received_bytes > self.max_bytes:
            return "max_snapshot_bytes"
        if now - self.started >= self.timeout:
            return "snapshot_timeout"
        return None

    def release(self) -> None:
        """Drop the entities and buffered events once reconciled (the mirror keeps what it needs)."""
        self.entities = {}
        self.buffered = []

    def _completed(self, how: Completion) -> None:
        self.complete = True
        self.completion = how
