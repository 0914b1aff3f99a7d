"""Everything about secrets in one place: the registry of values to redact, key names that are secret,
the token fingerprint, and the one helper that keeps secret fields out of ``repr``.

A secret is registered as soon as it is known (credentials when read, tokens when granted); from then on
:func:`redact_text` replaces it inside any string, and the log pipeline, status and metrics pass their text
through it.  Fields named by :func:`masked_repr` show ``***`` in ``repr`` so a secret cannot reach a log line
through a formatted object either.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable
from typing import Final, TypeVar

__all__ = [
    "MASK",
    "MIN_SECRET_LEN",
    "clear_secrets",
    "fingerprint",
    "is_secret_key",
    "masked_repr",
    "redact_text",
    "register_secret",
]

MASK: Final = "***"
#: Shorter values are not registered: masking "a" everywhere would make every log line unreadable.
MIN_SECRET_LEN: Final = 4

_secrets: set[str] = set()
_secret_re: re.Pattern[str] | None = None
_secrets_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Mask *value* wherever it appears in later text (ignored below :data:`MIN_SECRET_LEN` chars)."""
    global _secret_re  # noqa: PLW0603 - one process-wide registry, by design
    if not isinstance(value, str) or len(value) < MIN_SECRET_LEN or value in _secrets:
        return
    with _secrets_lock:
        _secrets.add(value)
        ordered = sorted(_secrets, key=len, reverse=True)  # longest first: no partial leaks
        _secret_re = re.compile("|".join(re.escape(s) for s in ordered))


def clear_secrets() -> None:
    """Forget every registered secret (tests; a process that dropped its credentials)."""
    global _secret_re  # noqa: PLW0603
    with _secrets_lock:
        _secrets.clear()
        _secret_re = None


def redact_text(text: str) -> str:
    """*text* with every registered secret replaced by ``***``."""
    pattern = _secret_re
    return pattern.sub(MASK, text) if pattern is not None else text


# Keys whose values are always masked, compared lowercased with "_", "-" and spaces removed; the
# first group also matches as a suffix (db_password, refresh_token, client_secret, ...).
_SECRET_SUFFIXES: Final = ("password", "passwd", "secret", "token", "dsn")
_SECRET_KEYS: Final = frozenset(
    {*_SECRET_SUFFIXES, "sec", "accesstoken", "mdaccesstoken", "authorization", "pticket", "credentials"}
)


def is_secret_key(key: str) -> bool:
    """Whether a mapping key (a log field, a JSON key) names a secret value."""
    norm = key.lower().replace("_", "").replace("-", "").replace(" ", "")
    return norm in _SECRET_KEYS or norm.endswith(_SECRET_SUFFIXES)


def fingerprint(token: str) -> str:
    """A short, non-reversible tag for a token (sha256 hex, 12 chars), safe to log and send."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


T = TypeVar("T", bound=type)


def masked_repr(*names: str) -> Callable[[T], T]:
    """Class decorator: ``repr`` shows every field, with those in ``names`` as ``'***'`` when set.

    Put it above ``@dataclass`` (it replaces the generated ``__repr__``)::

        @masked_repr("token")
        @dataclass(frozen=True)
        class Grant: ...
    """
    hidden = frozenset(names)

    def decorate(cls: T) -> T:
        fields: tuple[str, ...] = tuple(getattr(cls, "__dataclass_fields__", {}))
        missing = hidden - set(fields)
        if missing:
            raise TypeError(f"{cls.__name__} has no field(s) {sorted(missing)} to mask")

        def __repr__(self: object) -> str:
            parts = []
            for name in fields:
                value = getattr(self, name)
                shown = repr(MASK) if name in hidden and value else repr(value)
                parts.append(f"{name}={shown}")
            return f"{type(self).__name__}({', '.join(parts)})"

        cls.__repr__ = __repr__  # type: ignore[assignment]
        return cls

    return decorate
