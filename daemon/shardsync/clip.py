"""Server-supplied text, made safe to log, send to the parent, show in status: printable and short."""

from __future__ import annotations

__all__ = ["CLIP", "clip"]

#: Server-supplied text (a status reason, a host name) is cut to this many characters in any reason.
CLIP = 200


def clip(text: str, limit: int = CLIP) -> str:
    """``text`` with control characters replaced and cut to ``limit`` characters (marked with an ellipsis)."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "…"
