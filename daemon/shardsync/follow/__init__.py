"""``shardsync follow``: committed changes of every shard as JSON lines on stdout, resumable from a cursor file.

The line format is in :mod:`shardsync.follow.record`, the cursor file in
:mod:`shardsync.follow.cursor`.  Sources: a sqlite or jsonl state directory
(polled cheaply every ``--interval``) or a PostgreSQL DSN (woken by
``NOTIFY shardsync_changes``, with a slow fallback poll).  Shards are
followed as they appear; shards that are not live are reported on stderr
(and in the stream with ``--status-lines``).  SIGTERM/SIGINT stop after the
current pass, with its lines flushed and the cursor saved.

Modules: ``engine`` (the loop), ``source`` (what it needs from a sink) with ``sqlite_source``,
``jsonl_source`` and ``pg_source``, ``record`` (the line format), ``cursor``, ``health`` (which
shards to report as not live).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from shardsync.exitcodes import EX_CONFIG, EX_ERROR, EX_OK
from shardsync.follow.cursor import Cursor, CursorError
from shardsync.follow.engine import Follower
from shardsync.follow.source import Source, SourceError
from shardsync.sinks.base import shard_files

__all__ = ["add_arguments", "detect_kind", "main", "open_source"]

#: Seconds between polls of a state directory, and between fallback polls of PostgreSQL (NOTIFY wakes it).
FILE_INTERVAL = 0.25
PG_INTERVAL = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--path", metavar="DIR", help="a sqlite or jsonl state directory")
    where.add_argument("--dsn", help="a PostgreSQL DSN without password (use PGPASSWORD or ~/.pgpass)")
    where.add_argument("-c", "--config", metavar="FILE", help="follow the [sink] of this config file")
    parser.add_argument("--kind", choices=("sqlite", "jsonl"), help="the kind of --path (detected when omitted)")
    parser.add_argument("--cursor", metavar="FILE", help="resume from and keep the positions in this file")
    parser.add_argument("--from-start", action="store_true",
                        help="shards without a position start at their first retained change, not at the end")
    parser.add_argument("--types", action="append", default=[], metavar="T[,T...]",
                        help="only changes of these entity types (system events by their name)")
    parser.add_argument("--account", action="append", default=[], type=int, metavar="ID",
                        help="only changes of this account (repeatable)")
    parser.add_argument("--status-lines", action="store_true", help="also write status and gap notices as lines")
    parser.add_argument("--stale-after", type=float, default=10.0, metavar="S",
                        help="a live shard with no frame for this long is reported stale (default 10)")
    parser.add_argument("--status-interval", type=float, default=1.0, metavar="S",
                        help="seconds between looks at shard_status (default 1)")
    parser.add_argument("--interval", type=float, default=None, metavar="S",
                        help=f"poll interval (default {FILE_INTERVAL} for files, {PG_INTERVAL} for PostgreSQL)")
    parser.add_argument("--once", action="store_true", help="write what is committed now, then exit")


def detect_kind(path: str) -> str | None:
    """sqlite or jsonl, from the shard files in ``path``; None when it has none (or both)."""
    kinds = [kind for kind, suffix in (("sqlite", "sqlite3"), ("jsonl", "jsonl")) if shard_files(path, suffix)]
    return kinds[0] if len(kinds) == 1 else None


def open_source(kind: str, path: str = "", dsn: str = "") -> Source:
    if kind == "postgres":
        from shardsync.follow.pg_source import PostgresSource

        return PostgresSource(dsn)
    if not os.path.isdir(path):
        raise SourceError(f"{path}: not a directory")
    if kind == "sqlite":
        from shardsync.follow.sqlite_source import SqliteSource

        return SqliteSource(path)
    from shardsync.follow.jsonl_source import JsonlSource

    return JsonlSource(path)


def _password_in(dsn: str) -> bool:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        return "password" in conninfo_to_dict(dsn)
    except psycopg.Error:
        return False  # the connect refuses it, with its own message


def main(args: argparse.Namespace, *, kind: str, path: str = "", dsn: str = "", from_argv: bool = True) -> int:
    """Run ``follow`` on the resolved sink; ``from_argv`` says the DSN came from the command line."""
    if kind == "postgres" and from_argv and _password_in(dsn):
        print("shardsync follow: the DSN carries a password, which the command line shows to every user; "
              "use PGPASSWORD, ~/.pgpass or -c FILE", file=sys.stderr)
        return EX_CONFIG
    types = [t for item in args.types for t in item.split(",") if t]
    interval = args.interval if args.interval is not None else (PG_INTERVAL if kind == "postgres" else FILE_INTERVAL)
    try:
        cursor = Cursor(args.cursor)
        source = open_source(kind, path, dsn)
    except (CursorError, SourceError) as exc:
        print(f"shardsync follow: {exc}", file=sys.stderr)
        return EX_ERROR
    follower = Follower(source, cursor, sys.stdout.buffer, sys.stderr, from_start=args.from_start, types=types,
                        accounts=args.account, status_lines=args.status_lines, stale_after=args.stale_after,
                        status_every=args.status_interval)
    stop = _Stop()
    try:
        if args.once:
            while follower.step():
                pass
        else:
            follower.run(stop.requested, stop.fd, interval)
    except BrokenPipeError:
        # The reader went away: the cursor stays at the last pass that was flushed.
        _silence_stdout()
        return EX_OK
    except (SourceError, OSError) as exc:
        print(f"shardsync follow: {exc}", file=sys.stderr)
        return EX_ERROR
    finally:
        source.close()
        stop.close()
    return EX_OK


class _Stop:
    """SIGTERM/SIGINT set a flag and wake the wait through a pipe; the loop stops after its pass."""

    def __init__(self) -> None:
        self.fd, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._flag = False
        signal.set_wakeup_fd(self._write)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self._flag = True

    def requested(self) -> bool:
        return self._flag

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        os.close(self.fd)
        os.close(self._write)


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; point it at /dev/null so that does not raise too.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
