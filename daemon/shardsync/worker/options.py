"""What one worker needs to know: the one value the parent hands a forked worker.

The parent builds it from the settings (``shardsync.supervisor.options``); the
worker reads nothing else, so this is also what a reload compares.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """Everything that shapes one shard's session, sink and reconnects."""

    ws_url: str
    divisor: int
    expression: str
    entity_types: tuple[str, ...]
    split_responses: bool = True
    ca_file: str = ""
    handshake_timeout: float = 10.0
    idle_timeout: float = 10.0
    #: Largest WebSocket message (and total of a fragmented one), checked before the payload is read.
    max_message_bytes: int = 64 << 20
    heartbeat_interval: float = 1.0
    backoff_initial: float = 0.5
    backoff_max: float = 60.0
    sink_kind: str = "sqlite"
    sink_path: str = "./state"
    sink_dsn: str = ""
    #: Back-off after a ConnectionQuotaReached/IPQuotaReached shutdown: another
    #: connection of ours is being counted, so hurrying only evicts it again.
    quota_backoff: float = 60.0
    #: The quiet rule of worker/snapshot.py for split snapshots without an end marker.
    snapshot_quiet: float = 1.0
    #: Changes per sink transaction at most; smaller batches are committed as
    #: soon as the socket has nothing more to read right now.
    batch_max: int = 5000
    #: Oldest uncommitted change at most this old (seconds) while frames keep coming.
    flush_interval: float = 0.05
    #: Ask the parent for a connect permit before every connect.
    permits: bool = True
    #: Seconds within which the server must send ``o``, answer ``authorize`` and answer the
    #: syncrequest (its first part), each counted from when it was sent (again after a penalty resend).
    response_timeout: float = 30.0
    #: Bounds of one snapshot: seconds since its syncrequest, bytes received while it is
    #: assembled, entities held.  Exceeded: abandoned (``snapshot_incomplete``), sink untouched.
    snapshot_timeout: float = 600.0
    max_snapshot_bytes: int = 4 << 30
    max_snapshot_entities: int = 10_000_000
    #: Seconds the deletions of a snapshot whose end was inferred (quiet rule) wait before they commit.
    deletion_grace: float = 10.0
    #: A resync deleting more than this share of the shard's entities (and more than
    #: ``guard.MASS_MINIMUM``) is confirmed by a second snapshot first.
    max_resync_delete_ratio: float = 0.5
    #: Seconds the change log keeps a change (0: everything); pruned while the socket is quiet.
    events_retention: float = 7 * 86400.0
