"""What every sink promises: batched all-or-nothing writes, a freshness row, retention, a preload of state."""

from __future__ import annotations

import abc
import dataclasses
import errno
import fcntl
import os
import re
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Self

import orjson

from shardsync.change import DELETE_EVENT, LOG_ONLY_ORIGINS, UPSERT_EVENTS, Change
from shardsync.files import UnsafePath, check_state_dir, open_nofollow

Row = tuple[Any, ...]

#: Files are opened group-readable only: they hold account data.
FILE_MODE = 0o640
DIR_MODE = 0o750

#: Change-log rows removed per statement by :meth:`Sink.prune` (each call is one short transaction).
PRUNE_BATCH = 1000

#: What ``[sink] events_retention`` defaults to: 7 days, in seconds (0 keeps everything).
DEFAULT_RETENTION = 7 * 86400.0


class SinkError(Exception):
    """A sink could not persist or read; names the sink and its file or (password-free) dsn."""


class SinkUnavailable(SinkError):
    """The sink's server cannot be reached right now (connection refused or lost): nothing was written, and
    the same write may succeed later unchanged (``worker/outage.py``)."""


class SinkState(StrEnum):
    """What a shard's freshness row says about it (``shard_status.state``)."""

    SYNCING = "syncing"  # connecting or taking its first snapshot since the sink was empty
    LIVE = "live"  # snapshot reconciled, streaming; the row is refreshed at least every heartbeat_interval
    RESYNCING = "resyncing"  # reconnecting and taking a snapshot again: the data may be behind
    BACKOFF = "backoff"  # waiting before the next attempt: the data is behind
    STOPPED = "stopped"  # the daemon stopped the shard cleanly
    RETIRED = "retired"  # no longer owned (divisor or remainders changed): not current data


@dataclasses.dataclass(frozen=True, slots=True)
class Freshness:
    """One ``shard_status`` row.  Times are ISO-8601 UTC with milliseconds and ``Z`` (like ``received_at``)."""

    remainder: int
    divisor: int
    expression: str
    state: SinkState
    #: The last completed snapshot's commit.
    snapshot_at: str | None
    #: The last frame received from the server (any frame: Tradovate sends one every 2.5 s).
    last_event_at: str | None
    #: The last committed batch.
    last_commit_at: str | None
    #: An id that changes on every (re)sync.
    session: str

    def row(self) -> Row:
        """The values in column order: remainder, divisor, expression, state, snapshot_at, ..., session."""
        return (self.remainder, self.divisor, self.expression, str(self.state), self.snapshot_at,
                self.last_event_at, self.last_commit_at, self.session)

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON object keyed by column name (the jsonl sidecar, ``follow``'s notices)."""
        return dict(zip(STATUS_COLUMNS, self.row(), strict=True))

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Freshness:
        remainder, divisor, expression, state, snapshot_at, last_event_at, last_commit_at, session = row
        return cls(int(remainder), int(divisor), str(expression), SinkState(state), snapshot_at, last_event_at,
                   last_commit_at, str(session))

    @classmethod
    def from_json(cls, data: Any) -> Freshness:
        """Parse a sidecar object; raises ValueError (or KeyError/TypeError) when it is not one."""
        if not isinstance(data, dict):
            raise ValueError("not a status object")
        return cls.from_row([data[column] for column in STATUS_COLUMNS])


#: The columns of ``shard_status`` in order (sqlite and PostgreSQL alike).
STATUS_COLUMNS = ("remainder", "divisor", "expression", "state", "snapshot_at", "last_event_at",
                  "last_commit_at", "session")
#: Reads the status rows of a sqlite file (one) in STATUS_COLUMNS order.
STATUS_SELECT = (
    "SELECT remainder, divisor, expression, state, snapshot_at, last_event_at, last_commit_at, session "
    "FROM shard_status"
)


class Sink(abc.ABC):
    """One shard's persistent copy: current entities, the change log and the shard's freshness row.

    A sink belongs to one worker process and must be opened after fork: the
    single-writer locks are per open file description and a forked copy
    would share them.
    """

    remainder: int
    divisor: int

    @abc.abstractmethod
    def load(self) -> Iterator[tuple[str, int, dict[str, Any]]]:
        """Yield ``(entity_type, id, entity)`` for every current entity."""

    def preload(self) -> Iterator[tuple[str, int, dict[str, Any] | str]]:
        """:meth:`load` for the mirror: a sink holding each entity's JSON text as written may yield that text."""
        return self.load()

    @abc.abstractmethod
    def write(self, changes: Sequence[Change], freshness: Freshness | None = None) -> None:
        """Persist ``changes`` and the status row in one transaction; return only once durably committed.

        jsonl has no transactions: its status sidecar is replaced (atomically)
        after the batch's fsync, so it never claims more than is on disk.
        """

    @abc.abstractmethod
    def mark(self, freshness: Freshness) -> None:
        """Write only the status row: on state changes, and at least every heartbeat_interval while live."""

    @abc.abstractmethod
    def prune(self, retention: float, *, now: float, limit: int = PRUNE_BATCH) -> int:
        """Remove up to ``limit`` change-log rows received before ``now - retention`` (seconds since the epoch).

        Returns how many went; 0 means nothing more is due, so an idle
        worker calls it again until it returns 0.  ``retention`` 0 keeps
        everything.  ``entities`` is never pruned.
        """

    def status(self) -> Freshness | None:
        """The shard's status row as the sink holds it (None: none written yet); read at open to carry it on."""
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file/connection and the writer lock; safe to call twice."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def check_freshness(self, freshness: Freshness) -> None:
        if (freshness.remainder, freshness.divisor) != (self.remainder, self.divisor):
            raise SinkError(
                f"status row for shard {freshness.remainder}/{freshness.divisor} "
                f"given to the sink of {self.remainder}/{self.divisor}"
            )


def retired_status(current: Freshness | None, remainder: int, divisor: int) -> Freshness:
    """The status row of a retired shard: its last row with the state changed (an empty one if it had none)."""
    if current is None:
        return Freshness(remainder, divisor, "", SinkState.RETIRED, None, None, None, "")
    return dataclasses.replace(current, state=SinkState.RETIRED)


def utc_now() -> str:
    """Wall-clock time now in the sinks' time format."""
    return iso_utc(time.time())


def iso_utc(seconds: float) -> str:
    """``seconds`` since the epoch as ISO-8601 UTC with milliseconds and ``Z`` (the sinks' time format)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cutoff(retention: float, now: float) -> str | None:
    """The ``received_at`` before which changes are pruned, or None when nothing is (retention 0)."""
    if retention < 0:
        raise ValueError(f"retention must be >= 0, got {retention}")
    return iso_utc(now - retention) if retention else None


def shard_file_name(remainder: int, divisor: int, suffix: str) -> str:
    """``shard-003-of-016.sqlite3``: both numbers padded to 3 digits, wider when the divisor needs it."""
    check_shard(remainder, divisor)
    width = max(3, len(str(divisor)))
    return f"shard-{remainder:0{width}d}-of-{divisor:0{width}d}.{suffix.lstrip('.')}"


def parse_shard_file_name(name: str, suffix: str) -> tuple[int, int] | None:
    """``(remainder, divisor)`` of a shard file name made by :func:`shard_file_name`, or None for any other name."""
    match = _SHARD_FILE.fullmatch(name)
    if match is None or match["suffix"] != suffix.lstrip("."):
        return None
    remainder, divisor = int(match["remainder"]), int(match["divisor"])
    if len(match["remainder"]) != len(match["divisor"]) or divisor < 1 or remainder >= divisor:
        return None
    if name != shard_file_name(remainder, divisor, suffix):
        return None
    return remainder, divisor


def shard_files(path: str, suffix: str) -> dict[tuple[int, int], str]:
    """Every shard file of ``suffix`` directly in ``path`` (retired/ not included), by ``(remainder, divisor)``."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return {}
    found = {}
    for name in names:
        shard = parse_shard_file_name(name, suffix)
        if shard is not None:
            found[shard] = os.path.join(path, name)
    return found


_SHARD_FILE = re.compile(r"shard-(?P<remainder>\d{3,})-of-(?P<divisor>\d{3,})\.(?P<suffix>[a-z0-9]+)")


def check_shard(remainder: int, divisor: int) -> None:
    if divisor < 1 or not 0 <= remainder < divisor:
        raise ValueError(f"invalid shard {remainder}/{divisor}: need 0 <= remainder < divisor")


def ensure_dir(sink: str, path: str) -> None:
    """Create the state directory if needed and refuse one another user could plant files in."""
    if not path:
        raise SinkError(f"{sink} sink: no path configured")
    try:
        os.makedirs(path, mode=DIR_MODE, exist_ok=True)
        check_state_dir(path)
    except UnsafePath as exc:
        raise SinkError(f"{sink} sink: unsafe state directory: {exc}") from None
    except OSError as exc:
        raise SinkError(f"{sink} sink: cannot create directory {path}: {exc.strerror}") from exc


def lock_exclusive(sink: str, fd: int, what: str) -> None:
    """Take the single-writer lock on ``fd`` or fail at once if another writer holds it.

    Non-blocking on purpose: a second writer for a shard means the supervisor
    (or a second host) is wrong, and waiting would hide that.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise SinkError(f"{sink} sink: {what} is in use by another process") from None
        raise SinkError(f"{sink} sink: cannot lock {what}: {exc.strerror}") from exc


def open_file(sink: str, path: str, flags: int) -> int:
    """Open (creating, mode 0640) one of the shard's own files; a symlink planted there is refused."""
    try:
        return open_nofollow(path, flags | os.O_CREAT, FILE_MODE)
    except UnsafePath as exc:
        raise SinkError(f"{sink} sink: {exc}") from None
    except OSError as exc:
        raise SinkError(f"{sink} sink: cannot open {path}: {exc.strerror}") from exc


def refuse_symlinks(sink: str, *paths: str) -> None:
    """SinkError if any of ``paths`` is a symlink (files a library will open and follow on its own)."""
    for path in paths:
        if os.path.islink(path):
            raise SinkError(f"{sink} sink: {path} is a symbolic link; refusing to follow it")


def dump_error(sink: str, where: str, change: Change, exc: Exception) -> SinkError:
    return SinkError(
        f"{sink} sink: {where}: cannot serialize {change.entity_type} {change.event_type} id={change.id}: {exc}"
    )


def batch_rows(
    sink: str,
    where: str,
    changes: Sequence[Change],
    *,
    upsert: str,
    delete: str,
    event_prefix: tuple[Any, ...] = (),
) -> tuple[list[tuple[str, list[Row]]], list[Row]]:
    """Serialise a batch before any SQL runs: the entity statements with their rows, and the event rows.

    The ``entities`` table needs only each key's last change in the batch:
    the transaction hides the steps in between from every reader.  So a key
    changed many times in one batch (a position or cash balance during a
    burst) costs one row, and with one operation per key the deletes and
    upserts no longer depend on each other's order: one executemany each
    (and one row per key, as PostgreSQL's ON CONFLICT requires).  Every
    change still gets its own ``events`` row, in order (system and rejected
    ones only that).  A bad entity or event type fails the whole batch here,
    before the transaction.
    """
    events: list[Row] = []
    # The last state of each key changed in the batch; None: deleted.
    final: dict[tuple[str, int], Row | None] = {}
    dumps = orjson.dumps
    for change in changes:
        entity_type, event_type, ident, data = change.entity_type, change.event_type, change.id, change.data
        if data is None:  # the mirror's changes carry their text: their entities are not even parsed here
            try:
                data = dumps(change.entity).decode()
            except (TypeError, orjson.JSONEncodeError) as exc:
                raise dump_error(sink, where, change, exc) from exc
        events.append(
            (*event_prefix, change.received_at, change.origin, entity_type, event_type, ident, change.account_id, data)
        )
        if change.origin in LOG_ONLY_ORIGINS:
            continue
        if ident is None:
            raise SinkError(f"{sink} sink: {where}: {entity_type} {event_type} has no id")
        if event_type in UPSERT_EVENTS:
            final[(entity_type, ident)] = (entity_type, ident, change.account_id, data, change.received_at)
        elif event_type == DELETE_EVENT:
            final[(entity_type, ident)] = None
        else:
            raise SinkError(
                f"{sink} sink: {where}: unknown event type {event_type!r} for {entity_type} id={ident}"
            )
    runs: list[tuple[str, list[Row]]] = []
    deletes: list[Row] = [key for key, row in final.items() if row is None]
    upserts = [row for row in final.values() if row is not None]
    if deletes:
        runs.append((delete, deletes))
    if upserts:
        runs.append((upsert, upserts))
    return runs, events
