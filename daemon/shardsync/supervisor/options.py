"""The parent's one definition of what a worker depends on: settings -> :class:`WorkerOptions`.

It runs in the parent, so the worker never imports the configuration.  A
reload restarts a shard exactly when this value changes (``reload.py``), so
every setting a worker reads must come through here, and nothing else may.
"""

from __future__ import annotations

from shardsync.config import Settings
from shardsync.worker.options import WorkerOptions

__all__ = ["worker_options"]


def worker_options(settings: Settings) -> WorkerOptions:
    """The options every worker of ``settings`` runs with (one value for all remainders)."""
    t, s, sup, sink = settings.tradovate, settings.sync, settings.supervisor, settings.sink
    return WorkerOptions(
        ws_url=t.ws_url,
        divisor=s.divisor,
        expression=s.expression,
        entity_types=tuple(s.entity_types),
        split_responses=s.split_responses,
        ca_file=t.ca_file,
        handshake_timeout=t.handshake_timeout,
        idle_timeout=t.idle_timeout,
        max_message_bytes=t.max_message_bytes,
        heartbeat_interval=sup.heartbeat_interval,
        backoff_initial=sup.backoff_initial,
        backoff_max=sup.backoff_max,
        sink_kind=sink.kind,
        sink_path=sink.path,
        sink_dsn=sink.dsn,
        batch_max=sink.batch_max,
        flush_interval=sink.flush_interval,
        response_timeout=t.response_timeout,
        quota_backoff=t.quota_backoff,
        snapshot_timeout=t.snapshot_timeout,
        max_snapshot_bytes=t.max_snapshot_bytes,
        max_snapshot_entities=t.max_snapshot_entities,
        deletion_grace=t.deletion_grace,
        max_resync_delete_ratio=t.max_resync_delete_ratio,
        events_retention=sink.events_retention,
    )
