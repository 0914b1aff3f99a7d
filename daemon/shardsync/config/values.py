"""Pure parsers and checks for single config values: URLs, remainders, listen addresses, DSN passwords."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from shardsync.secrets import MASK

__all__ = [
    "MASK",
    "as_tuple",
    "check_url",
    "dsn_secrets",
    "is_loopback",
    "mask_dsn",
    "parse_listen",
    "parse_remainders",
]


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(value: str, secure: str, plain: str) -> str:
    if not value:
        return value  # only when environment is invalid: that error is reported
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in (secure, plain):
        raise ValueError(f"must start with {secure}:// or {plain}://")
    if not parts.hostname:
        raise ValueError("has no host")
    if parts.scheme == plain and not is_loopback(parts.hostname):
        raise ValueError(f"{plain}:// (unencrypted) is only allowed to a loopback host; use {secure}://")
    return value


_RANGE_RE = re.compile(r"^(\d+)(?:\s*-\s*(\d+))?$")


def parse_remainders(value: object, divisor: int | None) -> tuple[int, ...]:
    """Resolve ``"all"``, a list of ints or ``"0-7,12"`` to a sorted tuple.

    With ``divisor=None`` (the divisor itself is invalid) only the syntax is
    checked and an empty tuple is returned.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "all":
            if divisor is None:
                return ()
            return tuple(range(divisor))
        if not text:
            raise ValueError('empty selection; use "all", a list or ranges like "0-7,12"')
        spans: list[tuple[int, int]] = []
        for raw_item in text.split(","):
            item = raw_item.strip()
            m = _RANGE_RE.match(item)
            if m is None:
                raise ValueError(f"{item!r} is not a remainder or a range like 0-7")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if lo > hi:
                raise ValueError(f"bad range {item!r}: start > end")
            spans.append((lo, hi))
    elif isinstance(value, (list, tuple)):
        spans = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, int):
                raise ValueError(f"item {i} is not an integer")
            if item < 0:
                raise ValueError(f"remainder {item} < 0")
            spans.append((item, item))
    else:
        raise ValueError('expected "all", an array of integers or a string like "0-7,12"')

    if not spans:
        raise ValueError("empty selection")
    if divisor is None:
        return ()
    for _lo, hi in spans:
        if hi >= divisor:
            raise ValueError(f"remainder {hi} >= divisor {divisor}")
    seen: set[int] = set()
    for lo, hi in spans:
        for r in range(lo, hi + 1):
            if r in seen:
                raise ValueError(f"remainder {r} listed twice")
            seen.add(r)
    return tuple(sorted(seen))


def parse_listen(value: str) -> tuple[str, int] | None:
    value = value.strip()
    if not value:
        return None
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError('expected "[IPv6]:port", e.g. "[::1]:9464"')
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError('expected "host:port", e.g. "127.0.0.1:9464", or "" for off')
        if ":" in host:
            raise ValueError('an IPv6 address needs brackets: "[::1]:9464"')
    if not host:
        raise ValueError('missing host; e.g. "0.0.0.0:9464" for every interface')
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not a number in 0-65535")
    return host, int(port)


_DSN_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*):.*@", re.DOTALL)
_DSN_KW_RE = re.compile(r"""(?i)\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)""")


def mask_dsn(dsn: str) -> str:
    """The DSN with every password part replaced by ``***``."""
    if not dsn:
        return dsn
    masked = _DSN_URL_RE.sub(lambda m: f"{m.group(1)}:{MASK}@", dsn, count=1)
    return _DSN_KW_RE.sub(lambda m: f"{m.group(1)}{MASK}", masked)


def dsn_secrets(dsn: str) -> list[str]:
    found: list[str] = []
    m = _DSN_URL_RE.match(dsn)
    if m:
        found.append(dsn[len(m.group(1)) + 1 : m.end() - 1])
    for km in _DSN_KW_RE.finditer(dsn):
        found.append(km.group(2).strip("'"))
    return [s for s in found if s]


def as_tuple(value: object) -> object:
    """TOML arrays arrive as lists; the frozen models store tuples."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, tuple):
        return value
    raise ValueError("expected an array")
