"""What every sink promises: batched all-or-nothing writes and a preload of current state."""

from __future__ import annotations

import abc
import errno
import fcntl
import os
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Self

import orjson

from shardsync.change import DELETE_EVENT, UPSERT_EVENTS, Change, account_id_of

Row = tuple[Any, ...]

#: Files are opened group-readable only: they hold account data.
FILE_MODE = 0o640
DIR_MODE = 0o750


class SinkError(Exception):
    """A sink could not persist or read; names the sink and its file or (password-free) dsn."""


class Sink(abc.ABC):
    """One shard's persistent copy: current entities plus the change log.

    A sink belongs to one worker process and must be opened after fork: the
    single-writer locks are per open file description and a forked copy
    would share them.
    """

    @abc.abstractmethod
    def load(self) -> Iterator[tuple[str, int, dict[str, Any]]]:
        """Yield ``(entity_type, id, entity)`` for every current entity (to preload the mirror)."""

    @abc.abstractmethod
    def write(self, changes: Sequence[Change]) -> None:
        """Persist ``changes`` in one transaction; return only once durably committed."""

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


def shard_file_name(remainder: int, divisor: int, suffix: str) -> str:
    """``shard-003-of-016.sqlite3``: both numbers padded to 3 digits, wider when the divisor needs it."""
    check_shard(remainder, divisor)
    width = max(3, len(str(divisor)))
    return f"shard-{remainder:0{width}d}-of-{divisor:0{width}d}.{suffix.lstrip('.')}"


def check_shard(remainder: int, divisor: int) -> None:
    if divisor < 1 or not 0 <= remainder < divisor:
        raise ValueError(f"invalid shard {remainder}/{divisor}: need 0 <= remainder < divisor")


def ensure_dir(sink: str, path: str) -> None:
    if not path:
        raise SinkError(f"{sink} sink: no path configured")
    try:
        os.makedirs(path, mode=DIR_MODE, exist_ok=True)
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
    try:
        return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise SinkError(f"{sink} sink: cannot open {path}: {exc.strerror}") from exc


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
    change still gets its own ``events`` row, in order.  A bad entity or
    event type fails the whole batch here, before the transaction.
    """
    events: list[Row] = []
    # The last state of each key changed in the batch; None: deleted.
    final: dict[tuple[str, int], Row | None] = {}
    dumps = orjson.dumps
    for change in changes:
        entity, entity_type, event_type, ident = change.entity, change.entity_type, change.event_type, change.id
        try:
            data = dumps(entity).decode()
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise dump_error(sink, where, change, exc) from exc
        events.append((*event_prefix, change.received_at, change.origin, entity_type, event_type, ident, data))
        if change.origin == "system":
            continue
        if ident is None:
            raise SinkError(f"{sink} sink: {where}: {entity_type} {event_type} has no id")
        if event_type in UPSERT_EVENTS:
            final[(entity_type, ident)] = (
                entity_type, ident, account_id_of(entity_type, entity), data, change.received_at
            )
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
