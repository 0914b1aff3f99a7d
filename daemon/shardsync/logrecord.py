"""One log record as one JSON line shorter than ``PIPE_BUF``, however large its fields.

Lines from the parent and many forked workers share one pipe (journald,
supervisord, a terminal); a ``write`` of at most ``PIPE_BUF`` bytes is atomic,
so records never interleave.  Long strings and lists are cut step by step
(``"truncated": true`` is added); when even that is too long, the essentials
and the exception's type and message survive.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

import orjson

from shardsync import journal

__all__ = ["MAX_RECORD_BYTES", "serialize"]

#: a whole record, newline included, is shorter than this (PIPE_BUF on Linux)
MAX_RECORD_BYTES: Final = 4096

_JSON_OPTS: Final = orjson.OPT_NON_STR_KEYS
_LIMIT: Final = MAX_RECORD_BYTES - 1 - len(journal.prefix(journal.DEBUG))  # room for "<N>" and the newline
# (longest string, most list items) tried in turn until the record fits
_CLIP_STEPS: Final = ((1024, 32), (512, 16), (256, 8), (128, 6), (64, 4), (32, 4))
_LEADING_KEYS: Final = ("timestamp", "level", "event")
_KEEP_ON_OVERFLOW: Final = ("timestamp", "level", "event", "logger", "pid", "shard", "divisor")


def _clip(value: object, max_str: int, max_items: int) -> object:
    if isinstance(value, str):
        if len(value) > max_str:
            return f"{value[:max_str]}…[truncated {len(value) - max_str} chars]"
        return value
    if isinstance(value, dict):
        return {k: _clip(v, max_str, max_items) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = list(value)
        if len(items) > max_items:
            head = max_items // 2
            tail = max_items - head
            cut = len(items) - max_items
            items = [*items[:head], f"…[truncated {cut} items]", *items[len(items) - tail :]]
        return [_clip(v, max_str, max_items) for v in items]
    return value


def _exception_summary(exc: object) -> str | None:
    # (the first entry of ExceptionDictTransformer's list is the one raised)
    if isinstance(exc, list) and exc and isinstance(exc[0], dict):
        raised = exc[0]
        return f"{raised.get('exc_type', '?')}: {raised.get('exc_value', '')}"
    if isinstance(exc, str):
        lines = exc.strip().splitlines()
        return lines[-1] if lines else None
    return None


def _dumps(obj: object) -> bytes:
    try:
        return orjson.dumps(obj, default=str, option=_JSON_OPTS)
    except (TypeError, orjson.JSONEncodeError):
        # e.g. an int beyond 64 bits: stringify what orjson refuses
        return orjson.dumps(_stringify(obj), option=_JSON_OPTS)


def _stringify(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _stringify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stringify(v) for v in value]
    if value is None or isinstance(value, (bool, float, str)):
        return value
    return str(value)


def serialize(event_dict: Mapping[str, Any], **_: Any) -> bytes:
    """One JSON record (no newline), guaranteed shorter than ``MAX_RECORD_BYTES - 1``."""
    # timestamp, level and event lead: easier on the eye in journalctl/less
    event_dict = {**{k: event_dict[k] for k in _LEADING_KEYS if k in event_dict}, **event_dict}
    data = _dumps(event_dict)
    if len(data) < _LIMIT:
        return data
    for max_str, max_items in _CLIP_STEPS:
        clipped = _clip(dict(event_dict), max_str, max_items)
        assert isinstance(clipped, dict)
        clipped["truncated"] = True
        data = _dumps(clipped)
        if len(data) < _LIMIT:
            return data
    # too many keys: keep the essentials and the exception's type and message
    minimal: dict[str, object] = {k: event_dict[k] for k in _KEEP_ON_OVERFLOW if k in event_dict}
    dropped = len(event_dict) - len(minimal)
    summary = _exception_summary(event_dict.get("exception"))
    if summary is not None:
        minimal["exception"] = summary
    minimal["truncated"] = True
    minimal["dropped_keys"] = dropped
    data = _dumps(_clip(minimal, 256, 4))
    if len(data) < _LIMIT:
        return data
    return _dumps({"event": "log record too large", "truncated": True, "pid": os.getpid()})
