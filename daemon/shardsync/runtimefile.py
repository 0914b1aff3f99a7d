"""The daemon's runtime file: where its status listener is bound, for ``shardsync status -c FILE`` and the demo.

With ``[status] listen = "127.0.0.1:0"`` only the running daemon knows its
port, so it writes ``{"pid", "host", "port", "url", "config", "started_at"}``
to one file as soon as the listener is bound (and again when a reload moves
it), and removes it when it exits.  Where, in this order:

1. ``$RUNTIME_DIRECTORY/status.json`` when systemd gives the unit a runtime
   directory (``RuntimeDirectory=``; the first one when it lists several);
2. ``<sink.path>/daemon-status.json`` for the sqlite and jsonl sinks (the
   state directory the daemon writes anyway; a relative ``sink.path`` is
   relative to the daemon's working directory, so run ``status`` from there);
3. ``<config file's directory>/<its name without .toml>.status.json``
   otherwise (PostgreSQL without systemd).

The client computes the same path from the same config file and
environment.  A file naming a process that no longer exists is stale and
ignored.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Final

import orjson

from shardsync.atomicfile import replace_file

if TYPE_CHECKING:
    from collections.abc import Mapping

    from shardsync.config import Settings

__all__ = ["FILE_KINDS", "read_runtime", "remove_runtime", "runtime_path", "write_runtime"]

#: Sinks whose target is a directory the daemon owns.
FILE_KINDS: Final = frozenset({"sqlite", "jsonl"})
_MAX_SIZE: Final = 64 * 1024
_DIR_MODE: Final = 0o750


def runtime_path(settings: Settings, config_path: str, env: Mapping[str, str] | None = None) -> str:
    """Where the daemon of ``config_path`` (with ``settings``) keeps its runtime file."""
    env = os.environ if env is None else env
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return os.path.join(runtime, "status.json")
    if settings.sink.kind in FILE_KINDS:
        return os.path.join(settings.sink.path, "daemon-status.json")
    directory, name = os.path.split(os.path.abspath(config_path))
    stem = name.removesuffix(".toml")
    return os.path.join(directory, f"{stem}.status.json")


def write_runtime(path: str, *, pid: int, host: str, port: int, url: str, config: str, started_at: float) -> None:
    """Replace the runtime file at ``path`` (its directory created if missing); raises OSError."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=_DIR_MODE, exist_ok=True)
    doc = {"pid": pid, "host": host, "port": port, "url": url, "config": os.path.abspath(config),
           "started_at": started_at}
    replace_file(path, orjson.dumps(doc), durable=False)


def read_runtime(path: str) -> dict[str, Any] | None:
    """The runtime file's document if it exists, is sane and names a live process; else None."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_SIZE + 1)
        doc = orjson.loads(data)
    except (OSError, orjson.JSONDecodeError):
        return None
    if len(data) > _MAX_SIZE or not isinstance(doc, dict):
        return None
    pid, url = doc.get("pid"), doc.get("url")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not isinstance(url, str):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # stale: the daemon that wrote it is gone
    except PermissionError:
        pass  # alive, under another user (systemd's DynamicUser)
    return doc


def remove_runtime(path: str, pid: int) -> None:
    """Remove the runtime file if it is still this process's (a newer daemon may have replaced it)."""
    with contextlib.suppress(OSError, orjson.JSONDecodeError):
        with open(path, "rb") as handle:
            doc = orjson.loads(handle.read(_MAX_SIZE))
        if isinstance(doc, dict) and doc.get("pid") == pid:
            os.unlink(path)
