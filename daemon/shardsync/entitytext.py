"""An entity as the mirror, the snapshot assembler and the sinks hold it: its JSON text (pure).

``orjson.dumps`` of the entity as received, the very text a sink stores; an
entity no JSON text can hold (never one from the codec, whose depth bound is
orjson's) is held as the object itself.  Texts compare by value: equal texts
are equal, and texts that differ are parsed and compared, so a reordered
object or ``1`` against ``1.0`` is no change, exactly as parsed dicts compared.
"""

from __future__ import annotations

from typing import Any

import orjson

#: How an entity is held: its JSON text, or (not serialisable) the object itself.
Slot = Any

_dumps, _loads = orjson.dumps, orjson.loads


def text_of(entity: Any) -> str | None:
    """The JSON text the mirror and the sinks keep for ``entity``; None when it has none."""
    try:  # decode() also copies: the bytes orjson returns keep a 4 KiB allocation each
        return _dumps(entity).decode()
    except (TypeError, orjson.JSONEncodeError):
        return None


def entity_of(slot: Slot) -> Any:
    """The entity a slot holds (parsed anew from its text: callers may keep or change it)."""
    return _loads(slot) if type(slot) is str else slot


def same(slot: Slot, text: str | None, entity: Any) -> bool:
    """Whether the held ``slot`` and a new ``entity`` (or its text; the text is ``text``) are equal by value."""
    if text is not None and slot == text:
        return True
    try:
        return bool(entity_of(slot) == entity_of(entity))
    except RecursionError:  # nested too deep to compare: stored again
        return False
