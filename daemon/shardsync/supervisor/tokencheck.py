"""Whether a token from the login server may be handed to anyone (pure).

The token goes into every worker's ``authorize`` frame (a newline would end
its line: every worker used to crash on one) and into a renewal's
``Authorization`` header; Tradovate's tokens are a few hundred characters of
base64-like text.  So anything else is refused at the parent, before any
worker, pipe or log sees it, and the reason never quotes it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_TOKEN", "token_problem"]

#: A token longer than this is not Tradovate's.
MAX_TOKEN: Final = 8192


def token_problem(token: str) -> str | None:
    """Why ``token`` must not be used (None: usable): empty, over 8 KiB, or not all visible ASCII (0x21-0x7E)."""
    if not token:
        return "the access token is empty"
    if len(token) > MAX_TOKEN:
        return f"the access token is longer than {MAX_TOKEN} characters"
    if not all("!" <= ch <= "~" for ch in token):
        return "the access token has characters outside visible ASCII (control characters, spaces or non-ASCII)"
    return None
