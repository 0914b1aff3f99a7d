"""What one worker needs to know, taken from the validated settings."""

from __future__ import annotations

from dataclasses import dataclass

from shardsync.config import Settings


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
    idle_timeout: float = 30.0
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

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> WorkerOptions:
        t, s, sup, sink = settings.tradovate, settings.sync, settings.supervisor, settings.sink
        values: dict[str, object] = {
            "ws_url": t.ws_url,
            "divisor": s.divisor,
            "expression": s.expression,
            "entity_types": tuple(s.entity_types),
            "split_responses": s.split_responses,
            "ca_file": t.ca_file,
            "handshake_timeout": t.handshake_timeout,
            "idle_timeout": t.idle_timeout,
            "heartbeat_interval": sup.heartbeat_interval,
            "backoff_initial": sup.backoff_initial,
            "backoff_max": sup.backoff_max,
            "sink_kind": sink.kind,
            "sink_path": sink.path,
            "sink_dsn": sink.dsn,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
