"""A throwaway PostgreSQL 15 server per test session, and a fresh database per test (fixtures).

Registered for every test directory by tests/conftest.py: ``pg_server``
yields the maintenance database's DSN, ``pg_dsn`` a new empty database.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PG_BIN = Path(os.environ.get("SHARDSYNC_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerError(RuntimeError):
    """The throwaway server could not be set up (binaries missing, initdb or pg_ctl failed)."""


@contextlib.contextmanager
def throwaway_server() -> Iterator[str]:
    """A private server on a unix socket only, removed afterwards; yields a DSN for its maintenance database.

    bench/throughput.py runs one too; ``pg_server`` is this as a session fixture.
    """
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).exists():
            raise ServerError(f"PostgreSQL binaries missing: {PG_BIN / tool} (install postgresql-15 or set "
                              "SHARDSYNC_PG_BIN)")
    # initdb refuses to run as root; under root the server runs as the postgres user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    # Directly under /tmp: short enough for the socket path, traversable by postgres.
    base = Path(tempfile.mkdtemp(prefix="shardsync-pg-"))
    if as_user:
        shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", free_port()

    def run(*argv: str) -> None:
        done = subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = base / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise ServerError(f"{argv[0]} failed ({done.returncode}): {done.stderr or done.stdout}\n{tail}")

    try:
        run(str(PG_BIN / "initdb"), "-D", str(data), "-U", "shardsync", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-k {base} -p {port} -c listen_addresses='' -c fsync=off"
        run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o", options, "start")
        try:
            yield f"host={base} port={port} user=shardsync dbname=postgres"
        finally:
            run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A private server on a unix socket only; yields a DSN for its maintenance database."""
    try:
        with throwaway_server() as dsn:
            yield dsn
    except ServerError as exc:
        pytest.fail(str(exc))


_databases = itertools.count()


@pytest.fixture
def pg_dsn(pg_server: str) -> str:
    """A fresh, empty database per test so tests never see each other's rows."""
    import psycopg

    name = f"t{os.getpid()}_{next(_databases)}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_server.replace("dbname=postgres", f"dbname={name}")


def pg_query(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Rows of one statement on a fresh autocommit connection."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()
