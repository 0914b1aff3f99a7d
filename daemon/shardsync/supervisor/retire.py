"""Which shards' sink data no longer belongs to this host's configuration, and when to retire it (pure).

A shard file left by another divisor (a reshard) or by a remainder this host
no longer runs looks like current data to a consumer.  So it is *retired*
(``sinks.retire``: ``shard_status`` says ``retired``; sqlite/jsonl files move
to ``<path>/retired/``), but only once every shard of the current
configuration is live, so the copy a consumer turns to is there first:

* sqlite/jsonl: at start and after every reload, every ``shard-RRR-of-DDD.*``
  in the state directory whose divisor is not the configured one or whose
  remainder this host does not run;
* PostgreSQL: the tables are shared by every host, so only shards this host
  ran before a reload and the new configuration drops (never another
  host's); nothing at start, when the daemon cannot know what it ran.

A pending job whose shard the configuration owns again (re-added by a later
reload) is dropped, never retired.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from shardsync.config import Settings

__all__ = ["FILE_KINDS", "RetireJob", "owned", "removed_by_reload", "stale_files", "still_stale"]

FILE_KINDS: Final = frozenset({"sqlite", "jsonl"})
_SHARD_NAME: Final = re.compile(r"shard-(?P<remainder>\d{3,})-of-(?P<divisor>\d{3,})\.")


@dataclass(frozen=True, slots=True, order=True)
class RetireJob:
    """Retire shard ``remainder``/``divisor`` of the ``kind`` sink at ``path`` or ``dsn``."""

    kind: str
    path: str
    dsn: str
    remainder: int
    divisor: int
    #: Its replacements are live and committed (a resharding's old shard): PostgreSQL drops its current-state
    #: rows too, so a query of ``entities`` never counts an account twice. Otherwise they stay, marked retired.
    replaced: bool = False


def owned(job: RetireJob, settings: Settings) -> bool:
    """Whether ``settings`` run this shard in this very sink (then it must never be retired)."""
    sink, sync = settings.sink, settings.sync
    same_sink = job.kind == sink.kind and (job.path == sink.path if job.kind in FILE_KINDS else job.dsn == sink.dsn)
    return same_sink and job.divisor == sync.divisor and job.remainder in sync.remainders


def stale_files(names: Iterable[str], settings: Settings) -> list[RetireJob]:
    """The shards whose files are among ``names`` (a listing of the state directory) that ``settings`` do not own."""
    sink = settings.sink
    if sink.kind not in FILE_KINDS:
        return []
    found: set[RetireJob] = set()
    for name in names:
        match = _SHARD_NAME.match(name)
        if match is None:
            continue
        remainder, divisor = int(match["remainder"]), int(match["divisor"])
        if not 0 <= remainder < divisor:
            continue
        job = RetireJob(sink.kind, sink.path, "", remainder, divisor)
        if not owned(job, settings):
            found.add(job)
    return sorted(found)


def removed_by_reload(old: Settings, new: Settings) -> list[RetireJob]:
    """PostgreSQL shards this host ran under ``old`` that ``new`` does not (retired in ``old``'s database)."""
    if old.sink.kind != "postgres":
        return []
    jobs = (RetireJob("postgres", "", old.sink.dsn, remainder, old.sync.divisor) for remainder in old.sync.remainders)
    return [job for job in jobs if not owned(job, new)]


def still_stale(pending: Iterable[RetireJob], settings: Settings) -> list[RetireJob]:
    """The pending jobs the current configuration has not taken back."""
    return sorted(job for job in set(pending) if not owned(job, settings))
