"""Pure parsers and checks for single config values: URLs, remainders, listen addresses, DSN passwords."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote, urlsplit

from shardsync.secrets import MASK

__all__ = [
    "MASK",
    "as_tuple",
    "check_url",
    "dsn_secrets",
    "is_loopback",
    "mask_dsn",
    "parse_duration",
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
    if "@" in parts.netloc:
        # Credentials never travel in a URL: they would show in logs and status.
        raise ValueError("must not contain credentials (user:password@); they come from [credentials]")
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


_SECRET_PARAMS = frozenset({"password", "sslpassword"})
_URL_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _dsn_secret_spans(dsn: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every password value in a libpq DSN, URL or keyword/value form.

    Parsed the way libpq parses them (a regex missed ``password=a\\ b`` and
    ``password=a&b``); when in doubt a span errs on the long side, since an
    over-masked DSN only hides a little more of where the sink points.
    """
    spans: list[tuple[int, int]] = []
    scheme = _URL_SCHEME_RE.match(dsn)
    if scheme:
        start = scheme.end()
        query_at = dsn.find("?", start)
        head_end = len(dsn) if query_at < 0 else query_at
        at = dsn.rfind("@", start, head_end)
        if at >= 0:
            colon = dsn.find(":", start, at)
            if colon >= 0:
                spans.append((colon + 1, at))
        if query_at >= 0:
            offset = query_at + 1
            for item in dsn[query_at + 1 :].split("&"):
                key, sep, _ = item.partition("=")
                if sep and key.strip().lower() in _SECRET_PARAMS:
                    spans.append((offset + len(key) + 1, offset + len(item)))
                offset += len(item) + 1
        return spans
    i, n = 0, len(dsn)
    while i < n:
        while i < n and dsn[i].isspace():
            i += 1
        key_start = i
        while i < n and dsn[i] != "=" and not dsn[i].isspace():
            i += 1
        key = dsn[key_start:i].lower()
        while i < n and dsn[i].isspace():
            i += 1
        if i >= n or dsn[i] != "=":
            # Not key=value: libpq refuses such a DSN; mask the rest to be safe.
            if key:
                spans.append((key_start, n))
            break
        i += 1
        while i < n and dsn[i].isspace():
            i += 1
        value_start = i
        if i < n and dsn[i] == "'":
            i += 1
            while i < n and dsn[i] != "'":
                i += 2 if dsn[i] == "\\" else 1
            i = min(i + 1, n)
        else:
            while i < n and not dsn[i].isspace():
                i += 2 if dsn[i] == "\\" else 1
            i = min(i, n)
        if key in _SECRET_PARAMS:
            spans.append((value_start, i))
    return spans


def mask_dsn(dsn: str) -> str:
    """The DSN with every password part replaced by ``***``."""
    out, last = [], 0
    for start, end in _dsn_secret_spans(dsn):
        out += [dsn[last:start], MASK]
        last = end
    return "".join([*out, dsn[last:]])


def dsn_secrets(dsn: str) -> list[str]:
    """Every password in the DSN as written and unquoted/unescaped (both forms go to the log redactor)."""
    found: list[str] = []
    for start, end in _dsn_secret_spans(dsn):
        raw = dsn[start:end]
        found.append(raw)
        unquoted = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == "'" else raw
        found.append(re.sub(r"\\(.)", r"\1", unquoted))
        if "%" in raw:
            found.append(unquote(raw))  # a URL's userinfo and query are percent-encoded
    return [s for s in dict.fromkeys(found) if s]


def as_tuple(value: object) -> object:
    """TOML arrays arrive as lists; the frozen models store tuples."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, tuple):
        return value
    raise ValueError("expected an array")


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> object:
    """Seconds from a number or a string like ``"7d"``, ``"12h"``, ``"30m"``, ``"45s"``; other types pass on."""
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds or a duration like \"7d\"")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value.lower())
        if match is None:
            raise ValueError(f"{value!r} is not a duration; use seconds or e.g. \"7d\", \"12h\", \"30m\"")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value
