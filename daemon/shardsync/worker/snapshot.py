"""Assembles the initial snapshot of a sync request, in one or several parts (pure).

The split format of ``splitResponses: true`` is undocumented, so completion is
decided by this rule, first match wins:

1. the request asked for no split: the first successful response is all of it;
2. a same-id part carries an explicit end marker (an empty body, or a body with
   no collection and a true flag such as ``{"done": true}``): complete now;
3. otherwise no further same-id part arrived for ``quiet`` seconds after the
   last one: complete.  Props interleaved between parts do not extend the wait,
   because a server streaming live events would otherwise postpone it forever.

Props that arrive before completion are buffered and handed back in order,
each with the time it was received, to be applied after the snapshot has been
reconciled.  The entities of a part that the codec refused (quarantine) join
the buffer as one ``Rejected``, with an empty receive time: the batch stamps
them with the snapshot's.  A same-id part arriving
after completion is "late" (:meth:`SnapshotAssembler.on_late`): the quiet
rule fired too early, so the session resyncs with a doubled quiet period.
"""

from __future__ import annotations

from typing import Any, Final

from shardsync import syncmessage
from shardsync.change import Key
from shardsync.protocol import PropsEvent, ProtocolError, Rejected, Response, SystemEvent
from shardsync.quarantine import Refusal

#: The quiet period never grows beyond this (a late part doubles it).
MAX_QUIET: Final = 30.0


class SyncRejected(Exception):
    """The server refused the sync request (status and text from its response)."""

    def __init__(self, status: int, text: str) -> None:
        self.status = status
        self.text = text
        super().__init__(f"user/syncrequest refused with {status}: {text}")


class SnapshotAssembler:
    """Collects the parts answering request ``request_id`` and decides completion."""

    def __init__(self, request_id: int, *, split: bool, quiet: float) -> None:
        self.request_id = request_id
        self.split = split
        self.quiet = quiet
        self.entities: dict[Key, dict[str, Any]] = {}
        #: Events that arrived before completion, in order, each with its receive time.
        self.buffered: list[tuple[PropsEvent | SystemEvent, str]] = []
        self.parts = 0
        self.complete = False
        self._last_part_at: float | None = None

    def on_response(self, response: Response, now: float) -> None:
        """Take one response carrying the sync id; raises SyncRejected when refused."""
        if response.penalty is not None or not 200 <= response.status < 300:
            raise SyncRejected(response.status, response.error_text or "time penalty")
        self.parts += 1
        self._last_part_at = now
        if self.split and syncmessage.is_snapshot_end(response.data):
            self.complete = True
            return
        if response.data is None:
            raise ProtocolError("sync response without a body", b"")
        refused: list[Refusal] = []
        for entity_type, entity in syncmessage.snapshot_entities(response.data, refused, response.nesting):
            # The codec checked the id (syncmessage.snapshot_entities).
            self.entities[(entity_type, entity["id"])] = entity
        if refused:  # quarantine: kept in the change log with the snapshot
            self.buffered.append((Rejected(refused=tuple(refused)), ""))
        if not self.split:
            self.complete = True

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

    def check(self, now: float) -> bool:
        """Apply the quiet rule at ``now``; True once the snapshot is complete."""
        deadline = self.deadline()
        if deadline is not None and now >= deadline:
            self.complete = True
        return self.complete
