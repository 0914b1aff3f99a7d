"""The parts of an ``a[...]`` frame orjson refused that it can still parse, each refused entity marked (pure).

orjson parses nothing of a frame holding one value nested beyond 1024
levels, or one entity with bad UTF-8.  Rather than losing the frame (and,
for a snapshot, the shard: the server sends the same snapshot again), the
frame is split along its structure with a small iterative scanner and every
part is parsed on its own; a part orjson still refuses becomes an
:class:`~shardsync.quarantine.Unreadable` in its place.  What is marked,
level by level, stopping at the first that parses:

* the frame's items (its messages); an item that is not an object is marked whole;
* a props event: its ``d`` members, and of ``entity`` each element of a list or
  the single object: **each entity** is marked on its own;
* a response: its ``d`` members (the snapshot's collections), and in each
  collection **each entity**; a member that is not an array is marked whole
  (**the whole collection**);
* any other event: its ``d``, whole (the event is refused as one);
* any other member of an item (``e``, ``s``, ``i``...) that fails is marked
  too, and the codec then refuses the message as malformed.

A frame whose structure itself is broken (truncated, brackets that do not
match, a member without a value) raises :class:`Unscannable`; the codec turns
that into its ProtocolError as before.  The scanner keeps one counter and a
bytearray of open brackets, so any depth costs no recursion; each level's
parts are scanned once, so a frame costs a few passes over its bytes.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

from shardsync.clip import clip
from shardsync.quarantine import EXCERPT, UNREADABLE, Unreadable

__all__ = ["Node", "Unscannable", "messages", "scan"]

#: A string (escapes included), a bracket or separator, or a quote that opens no complete string.
_TOKEN: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:"]')
_SPACE: Final = b" \t\r\n"
_OPEN: Final = {ord("["): ord("]"), ord("{"): ord("}")}
_CLOSE: Final = frozenset(_OPEN.values())
_QUOTE, _COLON, _OPEN_OBJECT, _OPEN_ARRAY = ord('"'), ord(":"), ord("{"), ord("[")

Span = tuple[int, int]


class Unscannable(ValueError):
    """The frame's structure is broken: no part of it can be trusted."""


def _strip(raw: bytes, start: int, end: int) -> Span:
    while start < end and raw[start] in _SPACE:
        start += 1
    while end > start and raw[end - 1] in _SPACE:
        end -= 1
    return start, end


class Node:
    """A value's span in the frame; a container scanned deep enough also has its members' nodes."""

    __slots__ = ("end", "members", "start")

    def __init__(self, start: int, end: int, members: list[tuple[str | None, Node]] | None = None) -> None:
        self.start = start
        self.end = end
        self.members = members

    @property
    def span(self) -> Span:
        return self.start, self.end


class _Open:
    """A container being scanned: its members so far, the pending key and where the current value began."""

    __slots__ = ("child", "found", "is_object", "key", "part", "start")

    def __init__(self, start: int, is_object: bool) -> None:
        self.start = start
        self.is_object = is_object
        self.found: list[tuple[str | None, Node]] = []
        self.key: str | None = None
        self.part = start + 1  # where the current member (or its value, after a key) begins; -1: awaiting ':'
        self.child: Node | None = None  # the last container closed inside, to attach to its member

    def end_member(self, raw: bytes, at: int, closing: bool) -> None:
        start, end = _strip(raw, self.part, at) if self.part != -1 else (at, at)
        if start == end:
            if closing and not self.found and self.key is None and self.part != -1:
                return  # [] or {}
            raise Unscannable("a member without a value")
        if self.is_object and self.key is None:
            raise Unscannable("an object member without a key")
        child = self.child
        node = child if child is not None and (child.start, child.end) == (start, end) else Node(start, end)
        self.found.append((self.key, node))
        self.key, self.part, self.child = None, at + 1, None


def scan(raw: bytes, span: Span, levels: int) -> Node:
    """The node of the array or object ``raw[span]``, with members recorded for containers ``levels`` deep.

    The frame's own array is level 1.  One pass over the bytes whatever the
    depth: containers deeper than ``levels`` are only matched, not recorded.
    """
    start, end = _strip(raw, *span)
    if end - start < 2 or raw[start] not in _OPEN:
        raise Unscannable("not an array or object")
    closers = bytearray()
    opened: list[_Open] = []
    root: Node | None = None
    for token in _TOKEN.finditer(raw, start, end):
        at = token.start()
        byte = raw[at]
        if byte in _OPEN:
            closers.append(_OPEN[byte])
            if len(closers) <= levels:
                opened.append(_Open(at, byte == _OPEN_OBJECT))
            continue
        depth = len(closers)
        if byte in _CLOSE:
            if not depth or closers.pop() != byte:
                raise Unscannable("brackets do not match")
            if depth > levels:
                continue
            record = opened.pop()
            record.end_member(raw, at, True)
            node = Node(record.start, at + 1, record.found)
            if opened:
                opened[-1].child = node
            elif at + 1 != end:
                raise Unscannable("data after the closing bracket")
            else:
                root = node
        elif depth > levels:
            continue  # inside a member too deep to record: only its brackets matter
        elif byte == _QUOTE and token.end() - at == 1:
            raise Unscannable("unterminated string")
        elif byte == _QUOTE:
            record = opened[-1]
            if record.is_object and record.key is None and _strip(raw, record.part, at)[0] == at:
                try:
                    record.key = orjson.loads(raw[at:token.end()])
                except orjson.JSONDecodeError:
                    raise Unscannable("a key that is not a string") from None
                record.part = -1
        elif byte == _COLON:
            record = opened[-1]
            if not record.is_object or record.key is None or record.part != -1:
                raise Unscannable("misplaced ':'")
            record.part = at + 1
        else:  # a comma
            opened[-1].end_member(raw, at, False)
    if root is None:
        raise Unscannable("unterminated array or object")
    return root


#: Levels recorded in one scan: the frame, its items, their ``d``, the collections (or a props
#: ``entity`` list) in it; the entities in those are leaves, parsed on their own.
LEVELS: Final = 4


def _parse(raw: bytes, node: Node) -> tuple[bool, Any]:
    try:
        return True, orjson.loads(raw[node.start:node.end])
    except orjson.JSONDecodeError as exc:
        return False, exc.msg


def _mark(raw: bytes, node: Node, why: str) -> Unreadable:
    """An Unreadable for ``node``, with the object's top-level scalar members if it is one."""
    fields: dict[str, Any] = {}
    if raw[node.start] == _OPEN_OBJECT:
        try:
            parts = node.members if node.members is not None else scan(raw, node.span, 1).members
        except Unscannable:
            parts = None
        for key, part in parts or ():
            if key is not None and raw[part.start] not in _OPEN:
                ok, parsed = _parse(raw, part)
                if ok:
                    fields[key] = parsed
    text = raw[node.start:min(node.end, node.start + EXCERPT + 1)].decode("utf-8", "backslashreplace")
    return Unreadable(clip(text, EXCERPT), f"{UNREADABLE} ({why})", fields)


def _value(raw: bytes, node: Node) -> Any:
    ok, value = _parse(raw, node)
    return value if ok else _mark(raw, node, value)


def _elements(raw: bytes, node: Node) -> Any:
    """An array parsed element by element (each one that fails marked); anything else that fails marked whole."""
    ok, value = _parse(raw, node)
    if ok:
        return value
    if raw[node.start] != _OPEN_ARRAY or node.members is None:
        return _mark(raw, node, value)
    return [_value(raw, element) for _, element in node.members]


def _item(raw: bytes, node: Node) -> Any:
    ok, value = _parse(raw, node)
    if ok:
        return value
    if raw[node.start] != _OPEN_OBJECT or node.members is None:
        return _mark(raw, node, value)
    item: dict[str, Any] = {key or "": _value(raw, part) for key, part in node.members if key != "d"}
    payload = next((part for key, part in node.members if key == "d"), None)
    if payload is None:
        return item
    ok, value = _parse(raw, payload)
    if ok:
        item["d"] = value
    elif payload.members is None or raw[payload.start] != _OPEN_OBJECT or not (
        item.get("e") == "props" or "s" in item
    ):
        item["d"] = _mark(raw, payload, value)
    elif item.get("e") == "props":
        item["d"] = {key or "": (_elements if key == "entity" else _value)(raw, part) for key, part in payload.members}
    else:
        item["d"] = {key or "": _elements(raw, part) for key, part in payload.members}
    return item


def messages(raw: bytes) -> list[Any]:
    """The items of the frame ``raw`` (``a[...]``), as orjson would give them, refused parts marked."""
    start, end = _strip(raw, 1, len(raw))
    if raw[:1] != b"a" or raw[start:start + 1] != b"[":
        raise Unscannable("not a message frame")
    frame = scan(raw, (start, end), LEVELS)
    return [_item(raw, part) for _, part in frame.members or ()]
