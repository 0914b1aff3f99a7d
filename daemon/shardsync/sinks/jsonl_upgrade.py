"""The in-place upgrade of a jsonl log written before lines carried ``seq`` and ``accountId``.

The old lines are ``{"origin", "entityType", "eventType", "entity",
"receivedAt"}``.  The upgrade rewrites the file once, numbering the lines
1, 2, ... and attributing each change as the mirror would (its own account,
else its parent's as the log has it by then: a fill through its order), into
a temporary file that is fsynced and renamed over the log: a crash leaves
the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import orjson

from shardsync.change import ACCOUNT_VIA, DELETE_EVENT, LOG_ONLY_ORIGINS, account_id_of
from shardsync.sinks.base import FILE_MODE, SinkError
from shardsync.sinks.jsonl_files import first_line, lines_of
from shardsync.sinks.retired import sync_directory

OLD_KEYS = frozenset({"origin", "entityType", "eventType", "entity", "receivedAt"})


def needs_upgrade(fd: int) -> bool:
    """Whether the log's first line is in the old format (no ``seq``)."""
    line = first_line(fd)
    if line is None:
        return False
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False  # not ours to judge here: load() reports it with its line number
    return isinstance(record, dict) and record.keys() == OLD_KEYS


def upgrade(path: str) -> int:
    """Rewrite the old-format log at ``path`` in the current format; returns the number of lines."""
    temporary = f"{path}.upgrade{os.getpid()}"
    owners: dict[tuple[str, Any], int | None] = {}
    count = 0
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)  # stale or planted: removed, never followed
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        try:
            for number, line in enumerate(lines_of(path), 1):
                record = _old_record(path, number, line)
                os.write(fd, orjson.dumps(_converted(record, number, owners), option=orjson.OPT_APPEND_NEWLINE))
                count = number
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, path)
        sync_directory(os.path.dirname(path) or ".")
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise SinkError(f"jsonl sink: cannot upgrade {path}: {exc.strerror}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return count


def _old_record(path: str, number: int, line: bytes) -> dict[str, Any]:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise SinkError(f"jsonl sink: {path}: line {number}: invalid JSON: {exc}") from None
    if not isinstance(record, dict) or record.keys() != OLD_KEYS:
        raise SinkError(f"jsonl sink: {path}: line {number}: not a change record")
    return record


def _converted(record: dict[str, Any], seq: int, owners: dict[tuple[str, Any], int | None]) -> dict[str, Any]:
    entity_type, entity = record["entityType"], record["entity"]
    if record["origin"] in LOG_ONLY_ORIGINS:
        account = entity.get("accountId") if isinstance(entity, dict) else None
        account = account if type(account) is int else None
    else:
        account = account_id_of(entity_type, entity)
        if account is None and entity_type in ACCOUNT_VIA and isinstance(entity, dict):
            link, parent = ACCOUNT_VIA[entity_type]
            account = owners.get((parent, entity.get(link)))
        key = (entity_type, entity.get("id") if isinstance(entity, dict) else None)
        if record["eventType"] == DELETE_EVENT:
            owners.pop(key, None)
        else:
            owners[key] = account
    return {
        "seq": seq,
        "origin": record["origin"],
        "entityType": entity_type,
        "eventType": record["eventType"],
        "accountId": account,
        "entity": entity,
        "receivedAt": record["receivedAt"],
    }
