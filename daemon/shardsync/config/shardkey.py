"""What one shard's worker depends on (to be replaced by the reload planner's WorkerOptions)."""

from __future__ import annotations

from shardsync.config.models import Settings

# fields of [tradovate] only the parent uses (login and token renewal); a
# change there needs no worker restart.
_PARENT_ONLY_TRADOVATE = frozenset({"renew_before", "captcha_backoff", "lockout_backoff"})


def shard_key(settings: Settings, remainder: int) -> tuple[tuple[str, object], ...]:
    """A hashable value of exactly the settings one shard's worker depends on.

    Two keys differ iff that shard must be restarted on reload. Log level,
    status listener, credentials and parent-only timers are not part of it.
    """
    tv = settings.tradovate
    sync = settings.sync
    items: list[tuple[str, object]] = [("remainder", remainder)]
    items += [
        (f"tradovate.{name}", getattr(tv, name)) for name in type(tv).model_fields if name not in _PARENT_ONLY_TRADOVATE
    ]
    items += [
        ("sync.divisor", sync.divisor),
        ("sync.expression", sync.expression),
        ("sync.entity_types", sync.entity_types),
        ("sync.split_responses", sync.split_responses),
    ]
    items += [(f"sink.{name}", getattr(settings.sink, name)) for name in type(settings.sink).model_fields]
    items.append(("supervisor.heartbeat_interval", settings.supervisor.heartbeat_interval))
    return tuple(items)
