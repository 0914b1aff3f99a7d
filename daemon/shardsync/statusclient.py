"""``shardsync status``: ask a running daemon for its shards and print them.

The URL comes from ``--url``; else, with ``-c FILE``, from the runtime file
the daemon of that config wrote once bound (``runtimefile.py``: so a daemon
listening on port 0 is found), else from the file's ``[status] listen``; else
the default listener.  Output is a table, or the raw document with
``--json``.  Exit 1 when no daemon answers, 78 when the config is invalid.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import orjson

from shardsync.exitcodes import EX_CONFIG, EX_ERROR, EX_OK

__all__ = [
    "DEFAULT_URL",
    "StatusUnavailable",
    "add_arguments",
    "fetch_status",
    "main",
    "render_table",
    "url_for_listen",
]

DEFAULT_URL: Final = "http://127.0.0.1:9464/status"
_ERROR_WIDTH: Final = 48


class StatusUnavailable(Exception):
    """No usable status document at the URL; ``str()`` says where and why."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"no shardsync status at {url}: {reason}")


def url_for_listen(address: tuple[str, int]) -> str:
    """The ``/status`` URL of a listener bound to ``address``."""
    host, port = address
    # A wildcard bind is reachable on loopback; connecting to 0.0.0.0 is not portable.
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/status"


def _normalize(url: str) -> str:
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/status")
    return urlunsplit(parts)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def fetch_status(url: str, timeout: float = 3.0) -> dict[str, Any]:
    """GET the daemon's ``/status`` document; raise :class:`StatusUnavailable` on any failure."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise StatusUnavailable(url, "only http:// and https:// URLs are supported")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - scheme checked above
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked above
            body = response.read()
    except (urllib.error.URLError, OSError) as exc:
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()  # it holds the open response
        raise StatusUnavailable(url, _reason(exc)) from None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise StatusUnavailable(url, "the answer is not JSON (is this the shardsync status listener?)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("shards"), list):
        raise StatusUnavailable(url, "the answer is not a shardsync status document")
    return doc


# -- rendering -------------------------------------------------------------------


def _duration(seconds: object) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "-"
    s = int(seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _error(text: object) -> str:
    if not text:
        return ""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= _ERROR_WIDTH else flat[: _ERROR_WIDTH - 1] + "…"


def _summary_line(status: dict[str, Any]) -> str:
    shards = status.get("shards") or []
    summary: dict[str, Any] = dict(status.get("summary") or {})
    total = summary.pop("total", len(shards))
    parts = [f"{summary.pop('live', 0)}/{total} live", f"{summary.pop('backoff', 0)} backoff"]
    parts.append(f"{summary.pop('parked', 0)} parked")
    parts += [f"{count} {state}" for state, count in sorted(summary.items()) if count]
    return ", ".join(parts)


def render_table(status: dict[str, Any]) -> str:
    """A human table of ``status`` (a ``/status`` document), headed by a summary line."""
    ready = "ready" if status.get("ready") else "starting"
    head = [
        _summary_line(status),
        f"pid {_cell(status.get('pid'))}, up {_duration(status.get('uptime'))}, {ready}, "
        f"divisor {_cell(status.get('divisor'))}",
        "",
    ]
    columns = ("SHARD", "STATE", "PID", "UPTIME", "RESTARTS", "HEARTBEAT", "EVENTS/S", "ENTITIES", "LAST ERROR")
    rows: list[tuple[str, ...]] = [columns]
    for shard in status.get("shards") or []:
        state = "parked" if shard.get("parked") else _cell(shard.get("state"))
        if shard.get("next_restart_in") is not None and not shard.get("parked"):
            state += f" ({_duration(shard['next_restart_in'])})"
        rate = shard.get("events_per_s")
        rows.append(
            (
                _shard_name(shard, status.get("divisor")),
                state,
                _cell(shard.get("pid")),
                _duration(shard.get("uptime")),
                _cell(shard.get("restarts")),
                _duration(shard.get("last_heartbeat_age")),
                f"{rate:.1f}" if isinstance(rate, (int, float)) else "-",
                _cell(shard.get("entities")),
                _error(shard.get("last_error")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    numeric = {0, 2, 4, 6, 7}
    lines = []
    for row in rows:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(head + lines + _reshard_lines(status.get("reshard")))


def _shard_name(shard: dict[str, Any], divisor: object) -> str:
    """The remainder; "r/d" for a shard of another divisor (the old ones, while resharding)."""
    own = shard.get("divisor")
    name = _cell(shard.get("remainder"))
    return name if own in (None, divisor) else f"{name}/{_cell(own)}"


def _reshard_lines(reshard: object) -> list[str]:
    """The resharding plan: one line for it, one per move (its new and old shards and where it is)."""
    if not isinstance(reshard, dict):
        return []
    moves = reshard.get("moves") or []
    lines = ["", f"resharding {_cell(reshard.get('old_divisor'))} -> {_cell(reshard.get('divisor'))} "
                 f"({_cell(reshard.get('shape'))}): {_cell(reshard.get('state'))}, move {_cell(reshard.get('move'))}"
                 f"/{len(moves)}, {_duration(reshard.get('seconds'))}, "
                 f"peak {_cell(reshard.get('peak_extra_connections'))} extra connections"]
    for number, move in enumerate(moves, 1):
        start = ", ".join(str(r) for r in move.get("start") or []) or "-"
        stop = ", ".join(str(r) for r in move.get("stop") or []) or "-"
        why = f": {_error(move['why'])}" if move.get("why") else ""
        lines.append(f"  {number}. new {start} / old {stop}: {_cell(move.get('state'))}{why}")
    return lines


# -- command ---------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``shardsync status``."""
    parser.add_argument("-c", "--config", metavar="FILE", help="read the listener address from [status] listen")
    parser.add_argument("--url", help=f"status URL or host:port (default from the config, else {DEFAULT_URL})")
    parser.add_argument("--json", action="store_true", help="print the raw status document")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the daemon (default 3)")


def _resolve_url(args: argparse.Namespace) -> str | int:
    """The URL to ask, or an exit code after printing why there is none."""
    url: str | None = getattr(args, "url", None)
    if url:
        return _normalize(url)
    config: str | None = getattr(args, "config", None)
    if not config:
        return DEFAULT_URL
    from shardsync.config import ConfigError, load_config

    try:
        settings = load_config(config)
    except ConfigError as exc:
        print(f"shardsync: invalid configuration\n{exc}", file=sys.stderr)
        return EX_CONFIG
    address = settings.status.address
    if address is None:
        print(f'shardsync: the status listener is off in {config} ([status] listen = "")', file=sys.stderr)
        return EX_ERROR
    from shardsync.runtimefile import read_runtime, runtime_path

    path = runtime_path(settings, config)
    running = read_runtime(path)
    if running is not None:
        return str(running["url"])
    if address[1] == 0:
        print(f"shardsync: {config} listens on port 0 and no running daemon's runtime file is at {path} "
              "(not running, or started from another directory or environment?)", file=sys.stderr)
        return EX_ERROR
    return url_for_listen(address)


def main(args: argparse.Namespace) -> int:
    """Run ``shardsync status``; returns the exit code."""
    url = _resolve_url(args)
    if isinstance(url, int):
        return url
    try:
        status = fetch_status(url, timeout=getattr(args, "timeout", 3.0))
    except StatusUnavailable as exc:
        print(f"shardsync: {exc}", file=sys.stderr)
        return EX_ERROR
    if getattr(args, "json", False):
        print(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_table(status))
    return EX_OK
