"""Assembles the initial snapshot of a sync request, in one or several parts (pure).

The split format of ``splitResponses: true`` is undocumented, so completion is
decided by this rule, first match wins:

1. the request asked for no split: the first successful response is all of it;
2. a same-id part carries an explicit end marker (an empty body, or a body with
   no collection and a true flag such as ``{"done": true}``): complete now;
3. otherwise no further same-id part arrived for ``quiet`` seconds after the
   last one: complete.  Props interleaved between parts do not extend the wait,
   because a server streaming live events would otherwise postpone it forever.

Props that arrive before completion are buffered and handed back in order, to
be applied after the snapshot has been reconciled.  A same-id part arriving
after completion is "late": the quiet rule fired too early, so the session
resyncs with a doubled quiet period (worker/session.py ``_late_part``).
"""

from __future__ import annotations

from typing import Any

from shardsync import protocol
from shardsync.change import Key
from shardsync.protocol import PropsEvent, ProtocolError, Response, SystemEvent


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
        self.buffered: list[PropsEvent | SystemEvent] = []
        self.parts = 0
        self.complete = False
        self._last_part_at: float | None = None

    def on_response(self, response: Response, now: float) -> None:
        """Take one response carrying the sync id; raises SyncRejected when refused."""
        if response.penalty is not None or not 200 <= response.status < 300:
            raise SyncRejected(response.status, response.error_text or "time penalty")
        self.parts += 1
        self._last_part_at = now
        if self.split and protocol.is_snapshot_end(response.data):
            self.complete = True
            return
        if response.data is None:
            raise ProtocolError("sync response without a body", b"")
        for entity_type, entity in protocol.snapshot_entities(response.data):
            self.entities[(entity_type, entity["id"])] = entity
        if not self.split:
            self.complete = True

    def on_event(self, event: PropsEvent | SystemEvent) -> None:
        """Keep an event that arrived before the snapshot was complete."""
        self.buffered.append(event)

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
